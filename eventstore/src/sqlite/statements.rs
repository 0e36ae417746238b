//! The statements of the SQLite store, built once per [`Naming`] (ADR 0009).

use crate::naming::Naming;
use crate::sql::dialect::Lite;
use crate::sql::read::ReadSql;
use crate::sql::sagas::{SagaSql, TIMER_COLUMNS};
use crate::sql::trace::TraceSql;
use crate::sql::unit_of_work::MARK_COLUMNS;
use crate::sql::{self, EVENT_COLUMNS};

/// The most events one `INSERT` writes (13 parameters each, well under SQLite's limit of 32,766):
/// an append of more is written in chunks of this many.
pub(super) const EVENTS_PER_INSERT: usize = 128;

/// The most inbox marks one `INSERT` writes (`mark_received_all`): chunks of 32, 16, ..., 1
/// marks, so that a connection caches six statements for them, not one per batch size.
pub(super) const MARK_CHUNKS: [usize; 6] = [32, 16, 8, 4, 2, 1];

pub(super) struct Statements {
    pub(super) inbox: String,
    pub(super) mark_inbox: String,
    /// `mark_inbox_rows[i]`: [`MARK_CHUNKS`]`[i]` marks in one statement (9 parameters each, as
    /// `mark_inbox`), returning the ids it marked.
    pub(super) mark_inbox_rows: Vec<String>,
    /// Journals a sent message of a flow (the trace, ADR 0022).
    pub(super) journal_sent: String,
    pub(super) park_message: String,
    pub(super) parked_messages: String,
    pub(super) outbox: String,
    pub(super) insert_outbox: String,
    pub(super) outbox_status: String,
    pub(super) read_outbox: String,
    pub(super) log_end: String,
    pub(super) read_log: String,
    pub(super) events: String,
    /// Streams, snapshots and commands (shared with PostgreSQL).
    pub(super) read: ReadSql,
    /// `insert_events[n - 1]`: `n` events in one statement (13 anonymous parameters each, bound
    /// in order), then the stream type, the stream id and the version the stream must be at: the
    /// rows are inserted only if it is (the version check and the insert are one statement), in
    /// version order (`column4`), so that their global positions are the consecutive rowids
    /// that end at the connection's last one (nothing is returned: rows sent back one by one
    /// through the driver's worker thread cost more than the insert).
    pub(super) insert_events: Vec<String>,
    /// Is an event with id `?1` stored (which one of a refused chunk was the duplicate).
    pub(super) event_exists: String,
    /// The trace reads (shared with the other SQL backend).
    pub(super) trace: TraceSql,
    /// The saga tables (shared with PostgreSQL).
    pub(super) sagas: SagaSql,
    /// The due timers of a claim: `?1` saga types (a JSON array), `?2` the database's clock,
    /// `?3` limit; with each timer's claims so far.
    pub(super) claim_saga_timers: String,
    /// One claimed timer: `?1`..`?4` its identity, `?5` its leased deadline.
    pub(super) claim_saga_timer: String,
}

impl Statements {
    pub(super) fn new(naming: &Naming) -> Self {
        let events = naming.table("events");
        let outbox = naming.table("outbox");
        let outbox_dead = naming.table("outbox_dead");
        let inbox = naming.table("inbox");
        let inbox_dead = naming.table("inbox_dead");
        let sent = naming.table("sent");
        let saga_timers = naming.table("saga_timers");
        Self {
            claim_saga_timers: format!(
                "SELECT {TIMER_COLUMNS}, claims FROM {saga_timers} \
                 WHERE saga_type IN (SELECT value FROM json_each(?1)) AND due_at <= ?2 \
                 ORDER BY due_at LIMIT ?3"
            ),
            claim_saga_timer: format!(
                "UPDATE {saga_timers} SET claims = claims + 1, due_at = ?5 \
                 WHERE saga_id = ?1 AND step = ?2 AND attempt = ?3 AND kind = ?4"
            ),
            sagas: SagaSql::new::<Lite>(naming),
            trace: TraceSql::new::<Lite>(naming),
            mark_inbox: sql::unit_of_work::mark_inbox::<Lite>(&inbox),
            mark_inbox_rows: MARK_CHUNKS
                .iter()
                .map(|&n| {
                    format!(
                        "INSERT INTO {inbox} ({MARK_COLUMNS}) VALUES {} \
                         ON CONFLICT DO NOTHING RETURNING message_id",
                        anonymous_rows(n, 9)
                    )
                })
                .collect(),
            journal_sent: format!(
                "INSERT INTO {sent} (id, correlation_id, causation_id, type, topic, key, source, sent_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING"
            ),
            park_message: format!(
                "INSERT INTO {inbox_dead} (consumer, message_id, topic, partition, \"offset\", key, type, payload, headers, \
                 attempts, error, parked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (consumer, message_id) DO UPDATE SET attempts = excluded.attempts, error = excluded.error, \
                 parked_at = excluded.parked_at"
            ),
            parked_messages: format!(
                "SELECT message_id, topic, partition, \"offset\", key, type, payload, headers, attempts, error, parked_at \
                 FROM {inbox_dead} WHERE consumer = ?1 ORDER BY parked_at LIMIT ?2"
            ),
            inbox,
            insert_outbox: format!(
                "INSERT INTO {outbox} (id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            outbox_status: format!(
                "SELECT (SELECT COUNT(*) FROM {outbox}), (SELECT MIN(created_at) FROM {outbox}), \
                 (SELECT COUNT(*) FROM {outbox_dead})"
            ),
            read_outbox: format!(
                "SELECT {} FROM {outbox} ORDER BY seq LIMIT ?1",
                sql::OUTBOX_COLUMNS
            ),
            outbox,
            log_end: format!("SELECT COALESCE(MAX(global_position), 0) FROM {events}"),
            read_log: format!(
                "SELECT 0, stream_type, stream_id, {EVENT_COLUMNS}, headers FROM {events} \
                 WHERE global_position > ?1 AND global_position <= ?2 \
                 AND (?3 IS NULL OR event_type IN (SELECT value FROM json_each(?3))) \
                 AND (?4 IS NULL OR stream_type IN (SELECT value FROM json_each(?4))) \
                 AND (?5 IS NULL OR tenant_id = ?5) \
                 ORDER BY global_position LIMIT ?6"
            ),
            event_exists: format!("SELECT 1 FROM {events} WHERE event_id = ?1"),
            insert_events: (1..=EVENTS_PER_INSERT)
                .map(|n| {
                    format!(
                        "INSERT INTO {events} (event_id, stream_type, stream_id, stream_version, event_type, \
                         schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id, \
                         headers) SELECT * FROM (VALUES {}) \
                         WHERE (SELECT COALESCE(MAX(stream_version), 0) FROM {events} \
                         WHERE stream_type = ? AND stream_id = ?) = ? ORDER BY column4",
                        anonymous_rows(n, 13)
                    )
                })
                .collect(),
            read: ReadSql::new::<Lite>(naming),
            events,
        }
    }
}

/// The relay's statements (ADR 0009).
pub(super) struct RelaySql {
    pub(super) leases: String,
    pub(super) heartbeat: String,
    pub(super) forget_old: String,
    pub(super) live: String,
    pub(super) mine: String,
    pub(super) release_some: String,
    pub(super) renew: String,
    pub(super) take: String,
    pub(super) release_all: String,
    pub(super) forget: String,
    /// The claim of a relay that holds few slots: the rows of each slot through the slot index,
    /// sorted by `seq`.
    pub(super) claim: String,
    /// The claim of a relay that holds at least half of the slots (a lone relay holds them all):
    /// the outbox walked in `seq` order, which stops at the limit. Through the slot index the
    /// claim read and sorted every row of the held slots, the whole backlog, on every claim.
    pub(super) claim_by_seq: String,
    pub(super) complete: String,
    pub(super) fail: String,
    pub(super) park_copy: String,
    pub(super) park_delete: String,
    pub(super) dead: String,
    pub(super) dead_table: String,
    pub(super) retry_copy: String,
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
        let cols = sql::OUTBOX_COLUMNS;
        let o_cols = cols
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let claim = |slot: &str| {
            format!(
                "WITH w AS (SELECT seq, key FROM {outbox} o \
                   WHERE {slot} IN (SELECT value FROM json_each(?1)) \
                   AND key NOT IN (SELECT value FROM json_each(?4)) \
                   AND NOT EXISTS (SELECT 1 FROM {dead} d WHERE d.key = o.key) \
                   AND NOT EXISTS (SELECT 1 FROM {outbox} b WHERE b.key = o.key \
                     AND b.next_attempt_at IS NOT NULL AND b.next_attempt_at > ?3) \
                   ORDER BY seq LIMIT ?2), \
                 c AS (SELECT min(seq) AS seq FROM w GROUP BY key) \
                 SELECT {o_cols} FROM {outbox} o WHERE o.seq IN (SELECT seq FROM c) ORDER BY o.seq"
            )
        };
        Self {
            heartbeat: format!(
                "INSERT INTO {relays} (owner, heartbeat_at) VALUES (?1, ?2) \
                 ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
            ),
            forget_old: format!("DELETE FROM {relays} WHERE heartbeat_at < ?1"),
            live: format!("SELECT COUNT(*) FROM {relays} WHERE heartbeat_at > ?1"),
            mine: format!(
                "SELECT slot FROM {leases} WHERE owner = ?1 AND expires_at > ?2 ORDER BY slot"
            ),
            release_some: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL \
                 WHERE owner = ?1 AND slot IN (SELECT value FROM json_each(?2))"
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = ?2 WHERE owner = ?1 AND slot IN (SELECT value FROM json_each(?3))"
            ),
            take: format!(
                "UPDATE {leases} SET owner = ?1, expires_at = ?2 WHERE slot IN \
                 (SELECT slot FROM {leases} WHERE owner IS NULL OR expires_at <= ?3 ORDER BY slot LIMIT ?4) \
                 RETURNING slot"
            ),
            release_all: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL WHERE owner = ?1"
            ),
            forget: format!("DELETE FROM {relays} WHERE owner = ?1"),
            // As on PostgreSQL: a window of rows whose key is not in flight, parked or
            // waiting for a retry, then the first row of each key in it.
            claim: claim("slot"),
            // `+slot`: the slot term may not use the slot index, so the window is read in
            // `seq` (rowid) order and the scan stops at the limit.
            claim_by_seq: claim("+slot"),
            complete: format!(
                "DELETE FROM {outbox} WHERE seq IN (SELECT value FROM json_each(?2)) AND slot IN \
                 (SELECT slot FROM {leases} WHERE owner = ?1 AND expires_at > ?3)"
            ),
            fail: format!(
                "UPDATE {outbox} SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE seq = ?1"
            ),
            park_copy: format!(
                "INSERT INTO {dead} (seq, {MOVED}, attempts, last_error, next_attempt_at, error, parked_at) \
                 SELECT seq, {MOVED}, attempts + 1, ?2, next_attempt_at, ?2, ?3 FROM {outbox} WHERE seq = ?1"
            ),
            park_delete: format!("DELETE FROM {outbox} WHERE seq = ?1"),
            dead: format!("SELECT {cols}, error, parked_at FROM {dead} ORDER BY seq LIMIT ?1"),
            retry_copy: format!(
                "INSERT INTO {outbox} (seq, {MOVED}, attempts) SELECT seq, {MOVED}, 0 FROM {dead} WHERE seq = ?1"
            ),
            skip: format!("DELETE FROM {dead} WHERE seq = ?1"),
            dead_table: dead,
            leases,
        }
    }
}

/// `rows` rows of `columns` anonymous placeholders each: `(?, ?), (?, ?)` for two rows of two,
/// bound in order. Not numbered: sqlx looks each parameter of a statement up by name, and
/// SQLite finds a numbered name by walking the statement's list of names, so binding the 832
/// numbered parameters of 64 events took a quadratic 350,000 steps, a third of a 100-event
/// append's time; an anonymous parameter has no name to look up.
fn anonymous_rows(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Multi-row statements take anonymous placeholders, bound in order; the marks come in the
    /// chunk sizes of `MARK_CHUNKS`, in that order; an insert of events checks the stream's
    /// version in the same statement.
    #[test]
    fn multi_row_statements() {
        assert_eq!(anonymous_rows(2, 2), "(?, ?), (?, ?)");
        assert_eq!(anonymous_rows(1, 3), "(?, ?, ?)");
        let sql = Statements::new(&Naming::default());
        assert_eq!(sql.mark_inbox_rows.len(), MARK_CHUNKS.len());
        assert_eq!(
            sql.mark_inbox_rows[MARK_CHUNKS.len() - 1],
            "INSERT INTO \"eventfold_inbox\" (consumer, message_id, message_type, topic, correlation_id, \
             causation_id, sent_by, received_by, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING RETURNING message_id"
        );
        assert_eq!(sql.mark_inbox_rows[0].matches('?').count(), 32 * 9);
        assert_eq!(
            sql.insert_events[1],
            "INSERT INTO \"eventfold_events\" (event_id, stream_type, stream_id, stream_version, \
             event_type, schema_version, payload, recorded_at, source, correlation_id, causation_id, \
             tenant_id, headers) SELECT * FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?), \
             (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)) WHERE (SELECT COALESCE(MAX(stream_version), 0) \
             FROM \"eventfold_events\" WHERE stream_type = ? AND stream_id = ?) = ? \
             ORDER BY column4"
        );
    }

    /// The claim's exact SQL (the text is what the query plan depends on).
    #[test]
    fn saga_claim_statements() {
        let sql = Statements::new(&Naming::default());
        assert_eq!(
            sql.claim_saga_timers,
            "SELECT saga_id, saga_type, step, attempt, kind, due_at, claims FROM \
             \"eventfold_saga_timers\" WHERE saga_type IN (SELECT value FROM json_each(?1)) AND \
             due_at <= ?2 ORDER BY due_at LIMIT ?3"
        );
        assert_eq!(
            sql.claim_saga_timer,
            "UPDATE \"eventfold_saga_timers\" SET claims = claims + 1, due_at = ?5 WHERE \
             saga_id = ?1 AND step = ?2 AND attempt = ?3 AND kind = ?4"
        );
    }

    /// The query plans of the two outbox claims, on a migrated database: walked in `seq` order
    /// (no sort, so the scan stops at the limit) when the relay holds most slots; through the
    /// slot index when it holds few.
    #[tokio::test]
    async fn the_outbox_claims_plans() {
        let store = crate::sqlite::SqliteStore::connect("sqlite::memory:")
            .await
            .expect("a migrated in-memory database");
        let plan = |claim: String| {
            let pool = store.pool().clone();
            async move {
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(&format!("EXPLAIN QUERY PLAN {claim}"))
                        .bind("[1, 2]")
                        .bind(500_i64)
                        .bind(0_i64)
                        .bind("[]")
                        .fetch_all(&pool)
                        .await
                        .expect("explain the claim");
                rows.into_iter()
                    .map(|(.., detail)| detail)
                    .collect::<Vec<_>>()
            }
        };
        let by_seq = plan(store.relay.claim_by_seq.clone()).await;
        assert!(by_seq.iter().any(|d| d == "SCAN o"), "{by_seq:#?}");
        assert!(
            !by_seq.iter().any(|d| d.contains("FOR ORDER BY")),
            "the by-seq claim must not sort its window: {by_seq:#?}"
        );
        let by_slot = plan(store.relay.claim.clone()).await;
        assert!(
            by_slot
                .iter()
                .any(|d| d.contains("USING INDEX") && d.contains("outbox_slot_idx")),
            "{by_slot:#?}"
        );
    }
}
