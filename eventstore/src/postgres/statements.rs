//! The statements of the PostgreSQL store, built once per [`Naming`] (ADR 0007, 0009, 0017).

use crate::naming::Naming;
use crate::saga::MAX_CLAIM_LEASES;
use crate::sql::dialect::{Dialect, Pg};
use crate::sql::read::ReadSql;
use crate::sql::sagas::{SAGA_COLUMNS, SagaSql, UPSERT_TIMER};
use crate::sql::trace::TraceSql;
use crate::sql::unit_of_work::MARK_COLUMNS;
use crate::sql::{self, EVENT_COLUMNS};

/// The filter every statement that inserts outbox rows carries: it gives the transaction its id
/// before the first row takes its `seq` (the filter runs before the rows are projected, and so
/// before the identity default). The outbox floor (ADR 0017) needs it: a `seq` taken before a
/// moment belongs to a transaction whose id was given out before that moment.
pub(super) const XID_FIRST: &str = "pg_current_xact_id() IS NOT NULL";

/// The last `seq` the outbox's identity sequence gave out (NULL before its first use); `$1` is
/// the outbox table's qualified name. Read by the floor's advance and the status (ADR 0017).
pub(super) const LAST_OUTBOX_SEQ: &str =
    "pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')::regclass)";

/// An `Any` append of one event whose version a concurrent append took (it waited for that
/// transaction's commit) inserts nothing and returns no row, instead of failing on the unique
/// index and aborting the transaction: it is run again, without a savepoint. Only for one
/// event: of several, the first could be taken while the next ones are free.
const TAKEN_VERSION_IS_NO_ROW: &str =
    " ON CONFLICT (stream_type, stream_id, stream_version) DO NOTHING";

pub(super) struct Statements {
    pub(super) inbox: String,
    pub(super) mark_inbox: String,
    /// `mark_received_all`: `$1` consumer, `$2..$7` arrays of message id, type, topic,
    /// correlation id, causation id, sender, `$8` receiver, `$9` processed at; returns the ids
    /// it marked.
    pub(super) mark_inbox_all: String,
    pub(super) park_message: String,
    pub(super) parked_messages: String,
    pub(super) outbox: String,
    pub(super) insert_outbox: String,
    pub(super) append_one_outbox: String,
    /// [`append_one_outbox`](Self::append_one_outbox) for `Any`: a version a concurrent append
    /// took returns no row instead of an error (so no savepoint is needed to retry it).
    pub(super) append_one_outbox_any: String,
    /// [`append_one_outbox`](Self::append_one_outbox) for exactly one outbox row (a command's
    /// one event and its one message, the common case): the row's fields are taken by
    /// subscript, with no `UNNEST` and no join (the same parameters, arrays of length one).
    pub(super) append_single_outbox: String,
    /// [`append_single_outbox`](Self::append_single_outbox) for `Any` (see
    /// `append_one_outbox_any`).
    pub(super) append_single_outbox_any: String,
    pub(super) append_outbox: String,
    /// [`append_one_outbox`](Self::append_one_outbox) with the application's messages among the
    /// rows and their journal rows (`insert_outbox`'s): `$23` correlation ids (NULL: not
    /// journaled), `$24` causation ids, `$25` senders, `$26` the time (`append_and_enqueue`).
    pub(super) append_one_outbox_journal: String,
    /// [`append_outbox`](Self::append_outbox) with journal rows, as
    /// [`append_one_outbox_journal`](Self::append_one_outbox_journal).
    pub(super) append_outbox_journal: String,
    pub(super) outbox_status: String,
    pub(super) read_outbox: String,
    pub(super) append_one: String,
    /// [`append_one`](Self::append_one) for `Any` (see `append_one_outbox_any`).
    pub(super) append_one_any: String,
    pub(super) channel: String,
    pub(super) horizon: String,
    pub(super) read_log: String,
    pub(super) held_back: String,
    pub(super) head: String,
    pub(super) events: String,
    /// Streams, snapshots and commands (shared with SQLite).
    pub(super) read: ReadSql,
    pub(super) append: String,
    /// Appends of several streams in one statement (a shared commit, ADR 0024).
    pub(super) append_batch: String,
    /// Reads of several streams in one statement (shared reads, ADR 0024): `$1`/`$2` each
    /// read's stream, `$3` its first version, `$4` its most events; rows of the log's shape
    /// (the read's 1-based index in place of the commit key), ordered by read and version.
    pub(super) read_batch: String,
    /// The trace reads (shared with the other SQL backend).
    pub(super) trace: TraceSql,
    /// The saga tables (shared with SQLite).
    pub(super) sagas: SagaSql,
    /// Claims due timers: `$1` saga types, `$2` limit, `$3` lease in seconds.
    pub(super) claim_saga_timers: String,
    /// Locks several instances' rows in id order, with the clock: `$1` the ids.
    pub(super) lock_sagas: String,
    /// `register_sagas_with_clock`: `$1..$8` arrays of the rows' id, type, business key,
    /// status, detail, correlation id, definition version and version, inserted in the arrays'
    /// order; returns the inserted ids with the clock (a taken key returns no row).
    pub(super) register_sagas: String,
    /// The outcomes of several request keys of a participant: `$1` the participant, `$2` the
    /// keys; returns each found key with its outcome as text.
    pub(super) find_outcomes: String,
    /// Records several outcomes of a participant: `$1` the participant, `$2` the keys, `$3`
    /// the outcomes as JSON text; returns the keys it wrote (the others were recorded before).
    pub(super) record_outcomes: String,
    /// The end of a transition in one statement: cancels timers, deletes them all, stores
    /// timers and updates the instance's row. `$1`..`$6` as `update`; `$7`..`$9` the cancelled
    /// timers' steps, attempts and kinds; `$10` delete them all; `$11`..`$15` the stored timers'
    /// steps, attempts, kinds, types and deadlines. The three sets touch different rows (the
    /// caller sees to it): a statement's parts see one snapshot and must not write a row twice.
    pub(super) finish_saga_transition: String,
    /// A saga transition's writes after its lock in one statement
    /// (`SagaStore::write_saga_transition`): [`append_one_outbox_journal`](Self::append_one_outbox_journal)'s
    /// `$1`..`$26`, then [`finish_saga_transition`](Self::finish_saga_transition)'s `$1`..`$15`
    /// as `$27`..`$41`; the timers and the row are written only when the events are. Returns the
    /// events' positions and versions, and whether the instance's row was updated.
    pub(super) write_one_saga_transition: String,
    /// [`write_one_saga_transition`](Self::write_one_saga_transition) for several events.
    pub(super) write_saga_transition: String,
    /// The transitions of several instances in one statement
    /// (`SagaStore::write_saga_transitions`): [`append_batch`](Self::append_batch) with each
    /// transition's journal rows, timers and row. Returns `append_batch`'s rows, and a row
    /// `-n` for each transition `n` (1-based) whose instance's row was updated.
    pub(super) write_saga_transitions: String,
}

/// How an append with outbox rows ends: the events' positions and versions.
const RETURN_EVENTS: &str = " SELECT global_position, stream_version FROM ev";

/// The parameters of the events' part of [`Statements::write_saga_transition`]: its saga part's
/// `$1` is this plus one.
pub(super) const TRANSITION_EVENT_PARAMS: usize = 26;

/// `sql` with every placeholder `$n` written `$(n + by)` (the statements hold no other `$`).
fn shift_placeholders(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

impl Statements {
    pub(super) fn new(naming: &Naming) -> Self {
        let events = naming.table("events");
        // The stream's last row gives both the version to check and the commit key to extend
        // (ADR 0007); shared by the one-event and the many-event append.
        let append_with = format!(
            "WITH last AS (SELECT stream_version, commit_key FROM {events} \
               WHERE stream_type = $1 AND stream_id = $2 ORDER BY stream_version DESC LIMIT 1), \
             cur AS (SELECT COALESCE((SELECT stream_version FROM last), 0)::int8 AS v, \
               GREATEST(pg_current_xact_id()::text::int8, COALESCE((SELECT commit_key FROM last), 0)) AS k)"
        );
        let insert_events = format!(
            "INSERT INTO {events} (event_id, stream_type, stream_id, stream_version, event_type, schema_version, \
               payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers, commit_key) "
        );
        let one_event = "SELECT $3, $1, $2, cur.v + 1, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, cur.k \
             FROM cur WHERE $13::int8 IS NULL OR cur.v = $13";
        let many_events = "SELECT e.event_id, $1, $2, cur.v + e.ord, e.event_type, e.schema_version, e.payload, e.recorded_at, \
               e.source, e.correlation_id, e.causation_id, e.tenant_id, e.headers::jsonb, cur.k \
             FROM cur, UNNEST($3::uuid[], $4::text[], $5::int4[], $6::bytea[], $7::timestamptz[], $8::text[], \
               $9::uuid[], $10::uuid[], $11::text[], $12::text[]) WITH ORDINALITY \
               AS e(event_id, event_type, schema_version, payload, recorded_at, source, correlation_id, \
               causation_id, tenant_id, headers, ord) \
             WHERE $13::int8 IS NULL OR cur.v = $13 \
             ORDER BY e.ord";
        let outbox = naming.table("outbox");
        let sent = naming.table("sent");
        let outbox_columns =
            "id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot";
        let outbox_rows = |first: usize| {
            let p = |i: usize| first + i;
            format!(
                "FROM UNNEST(${}::uuid[], ${}::text[], ${}::text[], ${}::text[], ${}::bytea[], ${}::text[], \
                   ${}::text[], ${}::text[], ${}::int4[]) WITH ORDINALITY \
                   AS m(id, at, aid, ty, payload, topic, key, headers, slot, ord)",
                p(0),
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8)
            )
        };
        // Events and their outbox rows in one statement (one round trip, atomic on its own): the
        // rows are written only when the events are, and each message of an event gets the
        // stream version the database gave it (an `Any` append learns it only here).
        // With `journal`, the messages that carry a correlation id get their journal rows (as
        // `insert_outbox` writes them), only when the events are written.
        // With `single`, the statement takes exactly one outbox row (the arrays `$14`..`$22` of
        // length one) and one event, and selects the row's fields by subscript from the event's
        // row instead of unnesting the arrays and joining them to the events: the same row, for
        // about a tenth less of the server's CPU per statement (a command's one event and its
        // one message; measured with pgbench, see the book's performance chapter).
        let with_outbox = |events_select: &str,
                           on_conflict: &str,
                           journal: bool,
                           single: bool,
                           tail: &str| {
            let journal = if journal {
                format!(
                    "j AS (INSERT INTO {sent} (id, correlation_id, causation_id, type, topic, key, source, sent_at) \
                       SELECT s.id, s.corr, s.cause, s.ty, s.topic, s.key, s.src, $26 \
                       FROM UNNEST($14::uuid[], $17::text[], $19::text[], $20::text[], $23::uuid[], $24::uuid[], $25::text[]) \
                         AS s(id, ty, topic, key, corr, cause, src) \
                       WHERE s.corr IS NOT NULL AND EXISTS (SELECT 1 FROM ev) ON CONFLICT (id) DO NOTHING), "
                )
            } else {
                String::new()
            };
            let version = eventfold_core::outbox::headers::STREAM_VERSION;
            let outbox_insert = if single {
                format!(
                    "INSERT INTO {outbox} ({outbox_columns}) \
                       SELECT ($14::uuid[])[1], ($15::text[])[1], ($16::text[])[1], ($17::text[])[1], \
                         ($18::bytea[])[1], ($19::text[])[1], ($20::text[])[1], \
                         CASE WHEN ev.event_id = ($14::uuid[])[1] \
                           THEN ($21::text[])[1]::jsonb || jsonb_build_object('{version}', ev.stream_version::text) \
                           ELSE ($21::text[])[1]::jsonb END, ($22::int4[])[1] \
                       FROM ev WHERE {XID_FIRST}"
                )
            } else {
                format!(
                    "INSERT INTO {outbox} ({outbox_columns}) \
                       SELECT m.id, m.at, m.aid, m.ty, m.payload, m.topic, m.key, \
                         CASE WHEN ev.stream_version IS NULL THEN m.headers::jsonb \
                           ELSE m.headers::jsonb || jsonb_build_object('{version}', ev.stream_version::text) END, m.slot \
                       {rows} LEFT JOIN ev ON ev.event_id = m.id \
                       WHERE EXISTS (SELECT 1 FROM ev) AND {XID_FIRST} ORDER BY m.ord",
                    rows = outbox_rows(14),
                )
            };
            format!(
                "{append_with}, ev AS ({insert_events}{events_select}{on_conflict} \
                   RETURNING event_id, global_position, stream_version), {journal}\
                 ob AS ({outbox_insert}){tail}"
            )
        };
        // Appends of several streams (one per stream) in one statement, so one round trip and
        // one commit for all (ADR 0024): `$1`..`$3` each append's stream and expected version
        // (NULL: any), `$4`/`$5` each event's append (1-based) and place in it, `$6`..`$15` the
        // events' columns, `$16` each outbox row's append, `$17`..`$25` its columns. An append
        // whose version does not match writes nothing and comes back as a row with its index
        // and the version found; the others' events come back by id.
        let batch_head = format!(
            "WITH c AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY \
               AS c(stype, sid, expected, cmd)), \
             cur AS (SELECT c.cmd, c.stype, c.sid, c.expected, COALESCE(l.stream_version, 0)::int8 AS v, \
               GREATEST(pg_current_xact_id()::text::int8, COALESCE(l.commit_key, 0)) AS k \
               FROM c LEFT JOIN LATERAL (SELECT stream_version, commit_key FROM {events} x \
                 WHERE x.stream_type = c.stype AND x.stream_id = c.sid \
                 ORDER BY x.stream_version DESC LIMIT 1) l ON true), \
             ok AS (SELECT * FROM cur WHERE cur.expected IS NULL OR cur.v = cur.expected), \
             ev AS ({insert_events}SELECT e.event_id, ok.stype, ok.sid, ok.v + e.n, e.event_type, \
                 e.schema_version, e.payload, e.recorded_at, e.source, e.correlation_id, e.causation_id, \
                 e.tenant_id, e.headers::jsonb, ok.k \
               FROM UNNEST($4::int8[], $5::int8[], $6::uuid[], $7::text[], $8::int4[], $9::bytea[], \
                 $10::timestamptz[], $11::text[], $12::uuid[], $13::uuid[], $14::text[], $15::text[]) \
                 WITH ORDINALITY AS e(cmd, n, event_id, event_type, schema_version, payload, recorded_at, \
                 source, correlation_id, causation_id, tenant_id, headers, ord) \
               JOIN ok ON ok.cmd = e.cmd ORDER BY e.ord \
               RETURNING event_id, global_position, stream_version), \
             ob AS (INSERT INTO {outbox} ({outbox_columns}) \
               SELECT m.id, m.at, m.aid, m.ty, m.payload, m.topic, m.key, \
                 CASE WHEN ev.stream_version IS NULL THEN m.headers::jsonb \
                   ELSE m.headers::jsonb || jsonb_build_object('{version}', ev.stream_version::text) END, m.slot \
               FROM UNNEST($16::int8[], $17::uuid[], $18::text[], $19::text[], $20::text[], $21::bytea[], \
                 $22::text[], $23::text[], $24::text[], $25::int4[]) WITH ORDINALITY \
                 AS m(cmd, id, at, aid, ty, payload, topic, key, headers, slot, ord) \
               LEFT JOIN ev ON ev.event_id = m.id \
               WHERE m.cmd IN (SELECT ok.cmd FROM ok) AND {XID_FIRST} ORDER BY m.ord)",
            version = eventfold_core::outbox::headers::STREAM_VERSION,
        );
        let batch_rows = "SELECT NULL::int8, ev.event_id, ev.global_position, ev.stream_version FROM ev \
             UNION ALL SELECT cur.cmd, NULL::uuid, NULL::int8, cur.v FROM cur \
               WHERE NOT (cur.expected IS NULL OR cur.v = cur.expected)";
        let append_batch = format!("{batch_head} {batch_rows}");
        let read_batch = format!(
            "SELECT r.ord, e.stream_type, e.stream_id, {EVENT_COLUMNS}, e.headers::text \
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) WITH ORDINALITY \
               AS r(stype, sid, from_v, max_n, ord) \
             CROSS JOIN LATERAL (SELECT * FROM {events} x WHERE x.stream_type = r.stype \
               AND x.stream_id = r.sid AND x.stream_version >= r.from_v \
               ORDER BY x.stream_version LIMIT r.max_n) e \
             ORDER BY r.ord, e.stream_version"
        );
        let outbox_dead = naming.table("outbox_dead");
        let outbox_floor = naming.table("outbox_floor");
        let inbox = naming.table("inbox");
        let inbox_dead = naming.table("inbox_dead");
        let saga_timers = naming.table("saga_timers");
        let saga_requests = naming.table("saga_requests");
        let saga_table = naming.table("sagas");
        let now = <Pg as Dialect>::NOW;
        let saga_sql = SagaSql::new::<Pg>(naming);
        // The timer parts of a transition's end: `$1` the instance, `$7`..`$9` the cancelled
        // timers, `$10` delete them all, `$11`..`$15` the stored ones; each `AND {guard}`.
        let timer_ctes = |guard: &str| {
            let and = |g: &str| {
                if g.is_empty() {
                    String::new()
                } else {
                    format!(" AND {g}")
                }
            };
            let where_ = if guard.is_empty() {
                String::new()
            } else {
                format!(" WHERE {guard}")
            };
            format!(
                "cancelled AS (DELETE FROM {saga_timers} t \
                   USING UNNEST($7::text[], $8::int8[], $9::text[]) AS c(step, attempt, kind) \
                   WHERE t.saga_id = $1 AND t.step = c.step AND t.attempt = c.attempt AND t.kind = c.kind{}), \
                 cleared AS (DELETE FROM {saga_timers} WHERE saga_id = $1 AND $10{}), \
                 stored AS (INSERT INTO {saga_timers} (saga_id, step, attempt, kind, saga_type, due_at, claims) \
                   SELECT $1, p.step, p.attempt, p.kind, p.saga_type, p.due_at, 0 \
                   FROM UNNEST($11::text[], $12::int8[], $13::text[], $14::text[], $15::timestamptz[]) \
                     AS p(step, attempt, kind, saga_type, due_at){where_} {UPSERT_TIMER})",
                and(guard),
                and(guard),
            )
        };
        // After the events' part: the timers and the row, only when the events were written.
        let transition_tail = shift_placeholders(
            &format!(
                ", {}, upd AS ({} AND EXISTS (SELECT 1 FROM ev) RETURNING 1) \
                 SELECT global_position, stream_version, (SELECT COUNT(*) FROM upd)::int8 FROM ev",
                timer_ctes("EXISTS (SELECT 1 FROM ev)"),
                saga_sql.update,
            ),
            TRANSITION_EVENT_PARAMS,
        );
        Self {
            // One statement, so a transaction of its own: lock the oldest due timers that no
            // other claim holds (SKIP LOCKED: claimers do not queue behind each other; a row
            // another claim moved meanwhile is checked again and is no longer due), move each
            // one's deadline by its claims' leases, and return the deadline it had.
            claim_saga_timers: format!(
                "UPDATE {saga_timers} t SET claims = t.claims + 1, \
                 due_at = {now} + make_interval(secs => $3 * LEAST(t.claims + 1, {MAX_CLAIM_LEASES})) \
                 FROM (SELECT saga_id, step, attempt, kind, due_at FROM {saga_timers} \
                   WHERE saga_type = ANY($1) AND due_at <= {now} \
                   ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) c \
                 WHERE t.saga_id = c.saga_id AND t.step = c.step AND t.attempt = c.attempt AND t.kind = c.kind \
                 RETURNING t.saga_id, t.saga_type, t.step, t.attempt, t.kind, c.due_at"
            ),
            // Lookups of a batch's keys are written as one index lookup per key (a `LATERAL`
            // subquery the planner cannot flatten: it locks, or it has a `LIMIT`), not as
            // `= ANY($n)`: a generic plan cached while a table was small (a fresh database,
            // before autovacuum's first `ANALYZE`) kept a scan of the whole table, or of all a
            // participant's outcomes, for each batch, its cost growing with the table. `$1`
            // (distinct, sorted ids) is walked in order, so the locks are taken in id order.
            register_sagas: format!(
                "INSERT INTO {saga_table} ({SAGA_COLUMNS}) \
                 SELECT r.id, r.ty, r.key, r.status, r.detail, r.corr, r.dv, r.v, {now}, {now}, NULL \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], \
                   $7::int8[], $8::int8[]) WITH ORDINALITY AS r(id, ty, key, status, detail, corr, dv, v, ord) \
                 ORDER BY r.ord \
                 ON CONFLICT (saga_type, business_key) DO NOTHING RETURNING saga_id, {now}"
            ),
            lock_sagas: format!(
                "SELECT {SAGA_COLUMNS}, {now} FROM UNNEST($1::uuid[]) AS k(key) \
                 CROSS JOIN LATERAL (SELECT {SAGA_COLUMNS} FROM {saga_table} \
                   WHERE saga_id = k.key FOR UPDATE) s ORDER BY saga_id"
            ),
            find_outcomes: format!(
                "SELECT k.key, r.outcome::text FROM UNNEST($2::text[]) AS k(key) \
                 CROSS JOIN LATERAL (SELECT outcome FROM {saga_requests} \
                   WHERE participant = $1 AND request_key = k.key LIMIT 1) r"
            ),
            record_outcomes: format!(
                "INSERT INTO {saga_requests} (participant, request_key, outcome, recorded_at) \
                 SELECT $1, r.key, r.outcome::jsonb, {now} FROM UNNEST($2::text[], $3::text[]) AS r(key, outcome) \
                 ON CONFLICT (participant, request_key) DO NOTHING RETURNING request_key"
            ),
            // The row's update is `SagaSql::update` (the same `$1`..`$6`), after the timers.
            finish_saga_transition: format!("WITH {} {}", timer_ctes(""), saga_sql.update),
            sagas: saga_sql,
            trace: TraceSql::new::<Pg>(naming),
            mark_inbox: sql::unit_of_work::mark_inbox::<Pg>(&inbox),
            mark_inbox_all: format!(
                // `MARK_COLUMNS`, the per-message ones from the arrays.
                "INSERT INTO {inbox} ({MARK_COLUMNS}) \
                 SELECT $1, m.message_id, m.message_type, m.topic, m.correlation_id, m.causation_id, m.sent_by, $8, $9 \
                 FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::text[]) \
                   AS m(message_id, message_type, topic, correlation_id, causation_id, sent_by) \
                 ON CONFLICT DO NOTHING RETURNING message_id"
            ),
            park_message: format!(
                "WITH mark AS (INSERT INTO {inbox} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING) \
                 INSERT INTO {inbox_dead} (consumer, message_id, topic, partition, \"offset\", key, type, payload, headers, \
                 attempts, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11) \
                 ON CONFLICT (consumer, message_id) DO UPDATE SET attempts = EXCLUDED.attempts, error = EXCLUDED.error, \
                 parked_at = now()"
            ),
            parked_messages: format!(
                "SELECT message_id, topic, partition::int8, \"offset\", key, type, payload, headers::text, attempts::int8, error, parked_at \
                 FROM {inbox_dead} WHERE consumer = $1 ORDER BY parked_at LIMIT $2"
            ),
            inbox,
            // The rows, and the journal of those that belong to a flow (the trace, ADR 0022):
            // `$10`..`$12` are each message's correlation id (NULL: not journaled), causation id
            // and sender, `$13` the time (the client's clock, like the events' times). One statement, so one round trip as before.
            insert_outbox: format!(
                "WITH j AS (INSERT INTO {sent} (id, correlation_id, causation_id, type, topic, key, source, sent_at) \
                   SELECT s.id, s.corr, s.cause, s.ty, s.topic, s.key, s.src, $13 \
                   FROM UNNEST($1::uuid[], $4::text[], $6::text[], $7::text[], $10::uuid[], $11::uuid[], $12::text[]) \
                     AS s(id, ty, topic, key, corr, cause, src) \
                   WHERE s.corr IS NOT NULL ON CONFLICT (id) DO NOTHING) \
                 INSERT INTO {outbox} ({outbox_columns}) \
                 SELECT m.id, m.at, m.aid, m.ty, m.payload, m.topic, m.key, m.headers::jsonb, m.slot \
                 {} WHERE {XID_FIRST} ORDER BY m.ord",
                outbox_rows(1)
            ),
            append_one_outbox: with_outbox(one_event, "", false, false, RETURN_EVENTS),
            append_one_outbox_any: with_outbox(
                one_event,
                TAKEN_VERSION_IS_NO_ROW,
                false,
                false,
                RETURN_EVENTS,
            ),
            append_single_outbox: with_outbox(one_event, "", false, true, RETURN_EVENTS),
            append_single_outbox_any: with_outbox(
                one_event,
                TAKEN_VERSION_IS_NO_ROW,
                false,
                true,
                RETURN_EVENTS,
            ),
            append_outbox: with_outbox(many_events, "", false, false, RETURN_EVENTS),
            append_one_outbox_journal: with_outbox(one_event, "", true, false, RETURN_EVENTS),
            append_outbox_journal: with_outbox(many_events, "", true, false, RETURN_EVENTS),
            write_one_saga_transition: with_outbox(one_event, "", true, false, &transition_tail),
            write_saga_transition: with_outbox(many_events, "", true, false, &transition_tail),
            // The batch append's parts (`$1`..`$25`), then: the journal of the messages (`$26`
            // correlation ids, `$27` causation ids, `$28` senders, `$29` the time of sending,
            // as `Binds::journal` binds them), each transition's row (`$30`..`$35` as
            // `SagaSql::update`'s `$1`..`$6`, `$36` whether its timers all go), the cancelled
            // timers (`$37` their transition, `$38`..`$40` step, attempt, kind) and the stored
            // ones (`$41` their transition, `$42`..`$46` step, attempt, kind, type, deadline).
            // A transition's journal, timers and row are written only when its events are (it
            // is in `ok`). Each instance stands in one transition, so no part writes a row twice.
            write_saga_transitions: format!(
                "{batch_head}, \
                 j AS (INSERT INTO {sent} (id, correlation_id, causation_id, type, topic, key, source, sent_at) \
                   SELECT s.id, s.corr, s.cause, s.ty, s.topic, s.key, s.src, $29 \
                   FROM UNNEST($16::int8[], $17::uuid[], $20::text[], $22::text[], $23::text[], $26::uuid[], \
                     $27::uuid[], $28::text[]) AS s(cmd, id, ty, topic, key, corr, cause, src) \
                   WHERE s.corr IS NOT NULL AND s.cmd IN (SELECT ok.cmd FROM ok) ON CONFLICT (id) DO NOTHING), \
                 g AS (SELECT * FROM UNNEST($30::uuid[], $31::text[], $32::text[], $33::int8[], $34::int8[], \
                     $35::uuid[], $36::bool[]) WITH ORDINALITY \
                     AS g(saga_id, status, detail, dv, version, last_id, clear, cmd) \
                   WHERE g.cmd IN (SELECT ok.cmd FROM ok)), \
                 cancelled AS (DELETE FROM {saga_timers} t \
                   USING UNNEST($37::int8[], $38::text[], $39::int8[], $40::text[]) AS c(cmd, step, attempt, kind), g \
                   WHERE g.cmd = c.cmd AND t.saga_id = g.saga_id AND t.step = c.step \
                     AND t.attempt = c.attempt AND t.kind = c.kind), \
                 cleared AS (DELETE FROM {saga_timers} t USING g WHERE t.saga_id = g.saga_id AND g.clear), \
                 stored AS (INSERT INTO {saga_timers} (saga_id, step, attempt, kind, saga_type, due_at, claims) \
                   SELECT g.saga_id, p.step, p.attempt, p.kind, p.saga_type, p.due_at, 0 \
                   FROM UNNEST($41::int8[], $42::text[], $43::int8[], $44::text[], $45::text[], $46::timestamptz[]) \
                     AS p(cmd, step, attempt, kind, saga_type, due_at) JOIN g ON g.cmd = p.cmd {UPSERT_TIMER}), \
                 upd AS (UPDATE {saga_table} r SET status = g.status, detail = g.detail, \
                   definition_version = g.dv, version = g.version, last_event_id = g.last_id, updated_at = {now} \
                   FROM g WHERE r.saga_id = g.saga_id RETURNING g.cmd) \
                 {batch_rows} \
                 UNION ALL SELECT -upd.cmd, NULL::uuid, NULL::int8, 0::int8 FROM upd"
            ),
            // The floor's lag: from the floor to the first live row, or to the next `seq` when
            // there is none (the floor itself before the sequence was first used).
            outbox_status: format!(
                "SELECT (SELECT COUNT(*) FROM {outbox})::int8, (SELECT MIN(created_at) FROM {outbox}), \
                 (SELECT COUNT(*) FROM {outbox_dead})::int8, \
                 (SELECT GREATEST(COALESCE((SELECT MIN(o.seq) FROM {outbox} o), \
                   {LAST_OUTBOX_SEQ} + 1, \
                   f.floor_seq) - f.floor_seq, 0) FROM {outbox_floor} f)::int8"
            ),
            read_outbox: format!(
                "SELECT {} FROM {outbox} ORDER BY seq LIMIT $1",
                sql::OUTBOX_COLUMNS.replace(" headers,", " headers::text,")
            ),
            outbox,
            channel: match naming.schema() {
                Some(schema) => format!("{schema}.{}", naming.bare("events")),
                None => naming.bare("events"),
            },
            append_one: format!(
                "{append_with} {insert_events}{one_event} RETURNING global_position, stream_version"
            ),
            append_one_any: format!(
                "{append_with} {insert_events}{one_event}{TAKEN_VERSION_IS_NO_ROW} \
                 RETURNING global_position, stream_version"
            ),
            horizon: "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8".to_owned(),
            read_log: format!(
                "SELECT commit_key, stream_type, stream_id, {EVENT_COLUMNS}, headers::text FROM {events} \
                 WHERE (commit_key, global_position) > ($1, $2) AND commit_key < $3 \
                 AND ($4::text[] IS NULL OR event_type = ANY($4)) \
                 AND ($5::text[] IS NULL OR stream_type = ANY($5)) \
                 AND ($6::text IS NULL OR tenant_id = $6) \
                 ORDER BY commit_key, global_position LIMIT $7"
            ),
            // Only the newest row of the log index: some row is held back exactly when the
            // newest one is. (An EXISTS over the range lets a generic plan scan the table.)
            held_back: format!(
                "SELECT COALESCE((SELECT commit_key >= $1 AND (commit_key, global_position) > ($2, $3) \
                 FROM {events} ORDER BY commit_key DESC, global_position DESC LIMIT 1), false)"
            ),
            head: format!(
                "SELECT COALESCE((SELECT MAX(global_position) FROM {events}), 0)::int8, \
                   COALESCE((SELECT MAX(global_position) FROM {events} \
                     WHERE commit_key < pg_snapshot_xmin(pg_current_snapshot())::text::int8), 0)::int8"
            ),
            append: format!(
                "{append_with} {insert_events}{many_events} RETURNING global_position, stream_version"
            ),
            append_batch,
            read_batch,
            read: ReadSql::new::<Pg>(naming),
            events,
        }
    }
}

/// The relay's statements (ADR 0009).
pub(super) struct RelaySql {
    pub(super) heartbeat: String,
    pub(super) live: String,
    pub(super) mine: String,
    pub(super) release_some: String,
    pub(super) renew: String,
    pub(super) take: String,
    pub(super) release_all: String,
    pub(super) forget: String,
    pub(super) claim: String,
    pub(super) floor_lock: String,
    pub(super) floor_advance: String,
    pub(super) complete: String,
    pub(super) fail: String,
    pub(super) park: String,
    pub(super) dead: String,
    pub(super) dead_table: String,
    pub(super) retry: String,
    pub(super) skip: String,
}

/// Columns of a row moved between the outbox and its dead letters.
pub(super) const MOVED: &str =
    "id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot, created_at";

impl RelaySql {
    pub(super) fn new(naming: &Naming) -> Self {
        let outbox = naming.table("outbox");
        let dead = naming.table("outbox_dead");
        let leases = naming.table("outbox_leases");
        let relays = naming.table("outbox_relays");
        let floor = naming.table("outbox_floor");
        let cols = sql::OUTBOX_COLUMNS.replace(" headers,", " headers::text,");
        let o_cols = cols
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            heartbeat: format!(
                "INSERT INTO {relays} (owner, heartbeat_at) VALUES ($1, now()) \
                 ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now()"
            ),
            live: format!(
                "WITH gone AS (DELETE FROM {relays} WHERE heartbeat_at < now() - make_interval(secs => $1 * 3)) \
                 SELECT COUNT(*)::int8 FROM {relays} WHERE heartbeat_at > now() - make_interval(secs => $1)"
            ),
            mine: format!(
                "SELECT slot FROM {leases} WHERE owner = $1 AND expires_at > now() ORDER BY slot FOR UPDATE"
            ),
            release_some: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL WHERE owner = $1 AND slot = ANY($2)"
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = now() + make_interval(secs => $2) WHERE owner = $1 AND slot = ANY($3)"
            ),
            take: format!(
                "UPDATE {leases} SET owner = $1, expires_at = now() + make_interval(secs => $2) \
                 WHERE slot IN (SELECT slot FROM {leases} WHERE owner IS NULL OR expires_at <= now() \
                   ORDER BY slot LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING slot"
            ),
            release_all: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL WHERE owner = $1"
            ),
            forget: format!("DELETE FROM {relays} WHERE owner = $1"),
            // The window `w`: the oldest `$2` rows of the leased slots whose key is not in
            // flight (`$3`), not parked and not waiting for a retry (so a blocked key with a
            // long queue cannot fill the window and starve the others); then the first row of
            // each key in it. The slot and in-flight tests are hashed subplans (`NOT IN` over
            // `unnest`), one hash probe per row: `slot = ANY($1)` compares each row with
            // every leased slot, and `slot IN (...)` lets the planner pick a join that reads
            // the whole table. The wide columns are read in the window's index scan, once. The
            // scan starts at the floor (ADR 0017), past the index entries of deleted rows.
            // The parked and retry tests are one index probe per row (`OFFSET 0` keeps each
            // `NOT EXISTS` a subplan the planner cannot turn into a join): as an anti-join, a
            // generic plan made on a fresh, small outbox read the whole table once per claim,
            // dead rows included (ADR 0036).
            claim: format!(
                "SELECT * FROM (SELECT DISTINCT ON (w.key) * FROM \
                   (SELECT {o_cols} FROM {outbox} o \
                     WHERE o.seq >= (SELECT f.floor_seq FROM {floor} f) \
                     AND NOT (o.slot NOT IN (SELECT unnest($1::int4[]))) \
                     AND o.key NOT IN (SELECT unnest($3::text[])) \
                     AND NOT EXISTS (SELECT 1 FROM {dead} d WHERE d.key = o.key OFFSET 0) \
                     AND NOT EXISTS (SELECT 1 FROM {outbox} b WHERE b.key = o.key \
                       AND b.next_attempt_at IS NOT NULL AND b.next_attempt_at > now() \
                       OFFSET 0) \
                     ORDER BY o.seq LIMIT $2) w \
                   ORDER BY w.key, w.seq) f \
                 ORDER BY f.seq"
            ),
            // Run after `floor_lock` in the same transaction, so its snapshot sees every retry
            // that lowered the floor before the lock was taken, and no retry lowers it until
            // this commits. When every transaction with an id below `bound_xid` has ended (the
            // oldest running one, `h`, is not below it), each row with a `seq` up to `bound_seq`
            // is visible or gone, so the floor rises to the first live row, at most
            // `bound_seq + 1`. The bound then moves to the last value read before this
            // statement's snapshot (`seen_seq`) and that snapshot's next id (`x`).
            floor_lock: format!("SELECT floor_seq FROM {floor} FOR UPDATE SKIP LOCKED"),
            floor_advance: format!(
                "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS h, \
                   pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS x, \
                   COALESCE({LAST_OUTBOX_SEQ}, 0) AS last) \
                 UPDATE {floor} f SET \
                   floor_seq = CASE WHEN s.h >= f.bound_xid THEN LEAST(f.bound_seq + 1, COALESCE( \
                     (SELECT o.seq FROM {outbox} o WHERE o.seq >= f.floor_seq ORDER BY o.seq LIMIT 1), \
                     f.bound_seq + 1)) ELSE f.floor_seq END, \
                   bound_seq = CASE WHEN s.h >= f.bound_xid THEN f.seen_seq ELSE f.bound_seq END, \
                   bound_xid = CASE WHEN s.h >= f.bound_xid THEN s.x ELSE f.bound_xid END, \
                   seen_seq = s.last \
                 FROM s RETURNING f.floor_seq"
            ),
            complete: format!(
                "DELETE FROM {outbox} o WHERE o.seq = ANY($2) AND \
                 (SELECT l.owner FROM {leases} l WHERE l.slot = o.slot AND l.expires_at > now()) = $1"
            ),
            fail: format!(
                "UPDATE {outbox} SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = now() + make_interval(secs => $3) WHERE seq = $1"
            ),
            park: format!(
                "WITH moved AS (DELETE FROM {outbox} WHERE seq = $1 RETURNING *) \
                 INSERT INTO {dead} (seq, {MOVED}, attempts, last_error, next_attempt_at, error, parked_at) \
                 SELECT seq, {MOVED}, attempts + 1, $2, next_attempt_at, $2, now() FROM moved"
            ),
            dead: format!("SELECT {cols}, error, parked_at FROM {dead} ORDER BY seq LIMIT $1"),
            // The retried row keeps its `seq`, which may be below the floor: the floor is
            // lowered in the same transaction (ADR 0017).
            retry: format!(
                "WITH moved AS (DELETE FROM {dead} WHERE seq = $1 RETURNING *), \
                 lowered AS (UPDATE {floor} SET floor_seq = LEAST(floor_seq, $1) \
                   WHERE EXISTS (SELECT 1 FROM moved)) \
                 INSERT INTO {outbox} (seq, {MOVED}, attempts) OVERRIDING SYSTEM VALUE \
                 SELECT seq, {MOVED}, 0 FROM moved"
            ),
            skip: format!("DELETE FROM {dead} WHERE seq = $1"),
            dead_table: dead,
        }
    }
}

#[cfg(test)]
mod tests;
