//! Appends: events and their outbox rows in one statement (`UNNEST` for many), the expected
//! version checked by the statement and the unique index.

use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::*;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::{OUTBOX_SLOTS, OutboxRouting, append_messages};
use crate::sql::unit_of_work::{Savepoint, SavepointOf::Append, savepoint};
use crate::sql::{self, db_err, to_i64, to_u64};
use crate::store::{AppendResult, fill_source, validate_append};
use crate::trace::SentEntry;

/// Bind values of a statement, keeping the first one that failed to encode (the statement then
/// fails with it).
#[derive(Default)]
pub(super) struct Binds {
    pub(super) args: PgArguments,
    pub(super) error: Option<sqlx::error::BoxDynError>,
}

impl Binds {
    pub(super) fn add<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        if self.error.is_none() {
            if let Err(e) = sqlx::Arguments::add(&mut self.args, value) {
                self.error = Some(e);
            }
        }
        self
    }

    /// The columns of outbox rows, one array each (`insert_outbox`'s parameters).
    pub(super) fn outbox<'m>(
        &mut self,
        messages: impl IntoIterator<Item = &'m OutboxMessage>,
    ) -> &mut Self {
        let messages = messages.into_iter();
        let n = messages.size_hint().0;
        let (mut ids, mut ats, mut aids, mut tys, mut payloads) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut topics, mut keys, mut headers, mut slots) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for m in messages {
            ids.push(m.id);
            ats.push(m.aggregate_type.as_str());
            aids.push(m.aggregate_id.as_str());
            tys.push(m.message_type.as_str());
            payloads.push(m.payload.as_slice());
            topics.push(m.topic.as_str());
            keys.push(m.key.as_str());
            headers.push(sql::headers_json(&m.headers));
            slots.push(OutboxMessage::slot_of(&m.key, OUTBOX_SLOTS) as i32);
        }
        self.add(ids)
            .add(ats)
            .add(aids)
            .add(tys)
            .add(payloads)
            .add(topics)
            .add(keys)
            .add(headers)
            .add(slots)
    }

    /// The columns of events, one array each: id, type, schema version, payload, time, source,
    /// correlation, causation, tenant, headers (the appends' `UNNEST` parameters).
    pub(super) fn events<'e>(
        &mut self,
        events: impl IntoIterator<Item = &'e NewEvent>,
    ) -> &mut Self {
        let events = events.into_iter();
        let n = events.size_hint().0;
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut correlations = Vec::with_capacity(n);
        let mut causations = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        for e in events {
            ids.push(e.event_id);
            types.push(e.event_type.as_str());
            versions.push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
            payloads.push(e.payload.as_slice());
            times.push(e.timestamp);
            sources.push(e.source.as_str());
            correlations.push(e.correlation_id);
            causations.push(e.causation_id);
            tenants.push(e.tenant_id.as_deref());
            headers.push(sql::headers_json(&e.headers));
        }
        self.add(ids)
            .add(types)
            .add(versions)
            .add(payloads)
            .add(times)
            .add(sources)
            .add(correlations)
            .add(causations)
            .add(tenants)
            .add(headers)
    }

    /// The journal columns of outbox rows (`None`: not journaled): correlation ids, causation
    /// ids, senders, then the time of sending (`insert_outbox`'s last parameters).
    pub(super) fn journal(&mut self, journal: &[Option<SentEntry>]) -> &mut Self {
        self.add(
            journal
                .iter()
                .map(|j| j.as_ref().map(|j| j.correlation_id))
                .collect::<Vec<_>>(),
        )
        .add(
            journal
                .iter()
                .map(|j| j.as_ref().and_then(|j| j.causation_id))
                .collect::<Vec<_>>(),
        )
        .add(
            journal
                .iter()
                .map(|j| j.as_ref().map(|j| j.source.clone()))
                .collect::<Vec<_>>(),
        )
        .add(eventfold_core::metadata::now_micros())
    }

    pub(super) fn finish(self) -> Result<PgArguments, sqlx::error::BoxDynError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.args),
        }
    }
}

/// Appends `events` and, in the same statement, the `outbox` rows of the events (one round
/// trip either way; the rows are written only when the events are).
pub(super) async fn try_append(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: Option<i64>,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    try_append_journaled(conn, sql, stream_id, expected, events, outbox, None).await
}

/// [`try_append`] with journal rows for the outbox rows (`journal`, one per row, with an exact
/// `expected`): the events, their outbox rows, the application's messages and their journal
/// rows in one statement (`append_and_enqueue`).
pub(super) async fn try_append_journaled(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: Option<i64>,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
    journal: Option<&[Option<SentEntry>]>,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let journal = journal.filter(|_| !outbox.is_empty() && expected.is_some());
    let kind = match (outbox.is_empty(), journal) {
        (true, _) => Statement::Append,
        (false, None) => Statement::WithOutbox,
        (false, Some(journal)) => Statement::WithJournal(journal),
    };
    let (binds, statement) = append_binds(sql, stream_id, expected, events, outbox, kind);
    let args = binds.finish().map_err(sqlx::Error::Encode)?;
    sqlx::query_as_with(statement, args).fetch_all(conn).await
}

/// Which append statement [`append_binds`] binds.
pub(super) enum Statement<'j> {
    /// The events alone.
    Append,
    /// The events and their outbox rows.
    WithOutbox,
    /// The events, their outbox rows and the journal rows of the messages (exact version).
    WithJournal(&'j [Option<SentEntry>]),
    /// A saga transition's writes (`write_saga_transition`): the events, the outbox and
    /// journal rows, then the saga part, whose parameters the caller binds after these.
    SagaTransition(&'j [Option<SentEntry>]),
}

/// The parameters of an append statement up to its saga part, and the statement: the stream,
/// the events (scalars for one event, the common command; arrays for several), the expected
/// version (`None`: any), the outbox rows and their journal.
pub(super) fn append_binds<'s>(
    sql: &'s Statements,
    stream_id: &StreamId,
    expected: Option<i64>,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
    statement: Statement<'_>,
) -> (Binds, &'s str) {
    let mut binds = Binds::default();
    binds.add(stream_id.stream_type()).add(stream_id.id());
    let one = if let [e] = events {
        binds
            .add(e.event_id)
            .add(e.event_type.as_str())
            .add(i32::try_from(e.schema_version).unwrap_or(i32::MAX))
            .add(e.payload.as_slice())
            .add(e.timestamp)
            .add(e.source.as_str())
            .add(e.correlation_id)
            .add(e.causation_id)
            .add(e.tenant_id.as_deref())
            .add(sql::headers_json(&e.headers));
        true
    } else {
        binds.events(events);
        false
    };
    let any = expected.is_none();
    binds.add(expected);
    let outbox_rows = !matches!(statement, Statement::Append);
    let (text, journal) = match (statement, one) {
        (Statement::Append, true) if any => (&sql.append_one_any, None),
        (Statement::Append, true) => (&sql.append_one, None),
        (Statement::Append, false) => (&sql.append, None),
        (Statement::WithOutbox, true) if outbox.len() == 1 && any => {
            (&sql.append_single_outbox_any, None)
        }
        (Statement::WithOutbox, true) if outbox.len() == 1 => (&sql.append_single_outbox, None),
        (Statement::WithOutbox, true) if any => (&sql.append_one_outbox_any, None),
        (Statement::WithOutbox, true) => (&sql.append_one_outbox, None),
        (Statement::WithOutbox, false) => (&sql.append_outbox, None),
        (Statement::WithJournal(j), true) => (&sql.append_one_outbox_journal, Some(j)),
        (Statement::WithJournal(j), false) => (&sql.append_outbox_journal, Some(j)),
        (Statement::SagaTransition(j), true) => (&sql.write_one_saga_transition, Some(j)),
        (Statement::SagaTransition(j), false) => (&sql.write_saga_transition, Some(j)),
    };
    if outbox_rows {
        binds.outbox(outbox);
    }
    if let Some(journal) = journal {
        binds.journal(journal);
    }
    (binds, text)
}

/// What both appends do before their statement: the checks, the events' source, and the outbox
/// messages ([`append_messages`]). The first event's stream version is the expected one plus
/// one; with `Any` the statement writes the version the database gave each event instead.
pub(super) fn prepare_append(
    stream_id: &StreamId,
    expected: ExpectedVersion,
    mut events: Vec<NewEvent>,
    source: &str,
    routing: Option<&OutboxRouting>,
) -> Result<(Vec<NewEvent>, Vec<OutboxMessage>), StoreError> {
    // Filled first, so the store's own source is checked too.
    fill_source(&mut events, source);
    check_append(stream_id, &events)?;
    let first = expected.exact().unwrap_or(0) + 1;
    let outbox = append_messages(routing, stream_id, first, &events);
    Ok((events, outbox))
}

/// The events, the outbox rows and each row's journal entry of an append with messages.
pub(super) type PreparedRows = (Vec<NewEvent>, Vec<OutboxMessage>, Vec<Option<SentEntry>>);

/// The rows an append with the application's messages writes: [`prepare_append`]'s events and
/// outbox rows, the messages after them, and each row's journal entry (`None` for the events'
/// rows and for messages outside a flow). The messages are checked first.
pub(super) fn prepare_with_messages(
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    messages: Vec<OutboxMessage>,
    source: &str,
    routing: Option<&OutboxRouting>,
) -> Result<PreparedRows, StoreError> {
    crate::store::validate_messages(&messages)?;
    let (events, mut outbox) = prepare_append(stream_id, expected, events, source, routing)?;
    let mut journal: Vec<Option<SentEntry>> = vec![None; outbox.len()];
    journal.extend(messages.iter().map(|m| SentEntry::of(m, source)));
    outbox.extend(messages);
    Ok((events, outbox, journal))
}

pub(super) fn append_error(
    sql: &Statements,
    e: sqlx::Error,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> StoreError {
    match sql::unique_violation(&e) {
        Some(c) if c.ends_with("event_id_uq") => StoreError::DuplicateEventId {
            stream_id: stream_id.clone(),
            event_id: duplicate_id(&e, events),
        },
        Some(_) => StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: None,
        },
        None => db_err("appending events", &sql.events)(e),
    }
}

/// Checks what the database cannot: no empty batch, versions that fit the columns.
pub(super) fn check_append(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    validate_append(stream_id, events)?;
    if let Some(e) = events
        .iter()
        .find(|e| i32::try_from(e.schema_version).is_err())
    {
        return Err(StoreError::InvalidEvent {
            stream_id: stream_id.clone(),
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            reason: "schema version does not fit an INTEGER".to_owned(),
        });
    }
    Ok(())
}

/// Turns the rows an append returned into its result; no rows means the version did not match.
pub(super) async fn append_result(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    mut rows: Vec<(i64, i64)>,
    count: usize,
) -> Result<AppendResult, StoreError> {
    if rows.is_empty() {
        let actual = version_on(conn, &sql.read, stream_id).await?;
        return Err(StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: Some(actual),
        });
    }
    rows.sort_by_key(|(_, version)| *version);
    let version = to_u64(
        rows.last().map_or(0, |r| r.1),
        &sql.events,
        "stream version",
    )?;
    let positions = rows
        .iter()
        .map(|(p, _)| to_u64(*p, &sql.events, "global position"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AppendResult {
        previous_version: version - count as u64,
        version,
        positions,
    })
}

/// An append with an exact expected version (events and outbox rows): one statement, atomic on
/// its own.
pub(super) async fn append_exact(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<AppendResult, StoreError> {
    let v = to_i64(expected.exact().unwrap_or(0), stream_id)?;
    let rows = try_append(conn, sql, stream_id, Some(v), events, outbox)
        .await
        .map_err(|e| append_error(sql, e, stream_id, expected, events))?;
    append_result(conn, sql, stream_id, expected, rows, events.len()).await
}

/// An append in one statement on a pooled connection, outside a transaction (the statement
/// commits on its own): [`append_exact`] or [`append_any`] by `expected`.
pub(super) async fn append_pooled(
    pool: &sqlx::PgPool,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<AppendResult, StoreError> {
    let mut conn = sql::acquire(pool, &sql.events).await?;
    if expected.exact().is_some() {
        append_exact(&mut conn, sql, stream_id, expected, events, outbox).await
    } else {
        append_any(&mut conn, sql, stream_id, events, outbox).await
    }
}

/// An `Any` append outside a transaction (events and outbox rows): the statement commits on its
/// own, so when a concurrent append took the version it is simply run again (no savepoint).
pub(super) async fn append_any(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<AppendResult, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_append(conn, sql, stream_id, None, events, outbox).await {
            // One event whose version a concurrent append took: again.
            Ok(rows) if rows.is_empty() && attempt < ANY_RETRIES => {}
            Ok(rows) => {
                let any = ExpectedVersion::Any;
                return append_result(conn, sql, stream_id, any, rows, events.len()).await;
            }
            Err(e) => {
                let error = append_error(sql, e, stream_id, ExpectedVersion::Any, events);
                if !error.is_conflict() || attempt >= ANY_RETRIES {
                    return Err(error);
                }
            }
        }
    }
}

/// The event id named in a unique-violation detail, or the first id of the batch.
pub(super) fn duplicate_id(e: &sqlx::Error, events: &[NewEvent]) -> Uuid {
    let detail = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|d| d.detail().map(str::to_owned))
        .unwrap_or_default();
    events
        .iter()
        .map(|ev| ev.event_id)
        .find(|id| detail.contains(&id.to_string()))
        .unwrap_or_else(|| events.first().map_or(Uuid::nil(), |ev| ev.event_id))
}

/// How many times an `Any` append retries a concurrent insert before giving up. Each retry
/// first waits for the competing transaction (the unique index blocks until it ends), so this
/// bounds how many competitors in a row may win, not a busy loop; 16 was exhausted once by the
/// global-log stress test (writers holding their transactions open up to 150 ms on 2 cores).
pub(super) const ANY_RETRIES: usize = 64;

impl PgUnitOfWork {
    /// Appends the events and their outbox rows (one statement, plus a savepoint for `Any`).
    pub(super) async fn append_events(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let routing = self.routing.as_deref();
        let (events, outbox) = prepare_append(stream_id, expected, events, &self.source, routing)?;
        self.append_prepared(stream_id, expected, &events, &outbox)
            .await
    }

    /// Appends events and outbox rows [`prepare_append`] made: one statement, run again for
    /// `Any` when a concurrent append took the version (inside a savepoint for several events).
    pub(super) async fn append_prepared(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        outbox: &[OutboxMessage],
    ) -> Result<AppendResult, StoreError> {
        if expected.exact().is_some() {
            let sql = &self.sql;
            let result =
                append_exact(&mut self.tx, sql, stream_id, expected, events, outbox).await?;
            self.wrote_events = true;
            return Ok(result);
        }
        // `Any` must not fail because of a concurrent append. One event: its statement returns
        // no row when the version was taken, and is run again (no savepoint, no error). Several:
        // retried inside a savepoint, so that a unique violation does not abort the whole unit
        // of work.
        let single = events.len() == 1;
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            let table = &self.sql.events;
            if !single {
                savepoint::<Postgres>(&mut self.tx, Append, Savepoint::Open, table).await?;
            }
            match try_append(&mut self.tx, &self.sql, stream_id, None, events, outbox).await {
                Ok(rows) if single && rows.is_empty() && attempt < ANY_RETRIES => {}
                Ok(rows) => {
                    if !single {
                        savepoint::<Postgres>(&mut self.tx, Append, Savepoint::Release, table)
                            .await?;
                    }
                    break rows;
                }
                Err(e) => {
                    let error = append_error(&self.sql, e, stream_id, expected, events);
                    if single {
                        return Err(error);
                    }
                    savepoint::<Postgres>(&mut self.tx, Append, Savepoint::RollBack, table).await?;
                    if !error.is_conflict() || attempt >= ANY_RETRIES {
                        return Err(error);
                    }
                }
            }
        };
        self.appended(stream_id, expected, rows, events.len()).await
    }

    /// The result of an append this unit of work's statement wrote (`rows`, none when the
    /// version did not match); the relay is woken at commit.
    async fn appended(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        rows: Vec<(i64, i64)>,
        count: usize,
    ) -> Result<AppendResult, StoreError> {
        let result =
            append_result(&mut self.tx, &self.sql, stream_id, expected, rows, count).await?;
        self.wrote_events = true;
        Ok(result)
    }

    /// [`UnitOfWork::append_and_enqueue`](crate::store::UnitOfWork::append_and_enqueue): with an
    /// exact expected version and messages, the events, their outbox rows, the messages and
    /// their journal rows in one statement; otherwise an append, then the messages.
    pub(super) async fn append_with_messages(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        messages: Vec<OutboxMessage>,
    ) -> Result<AppendResult, StoreError> {
        crate::store::validate_messages(&messages)?;
        let Some(exact) = expected.exact().filter(|_| !messages.is_empty()) else {
            let result = self.append_events(stream_id, expected, events).await?;
            self.insert_outbox(messages).await?;
            return Ok(result);
        };
        let routing = self.routing.as_deref();
        let (events, outbox, journal) =
            prepare_with_messages(stream_id, expected, events, messages, &self.source, routing)?;
        let v = to_i64(exact, stream_id)?;
        let rows = try_append_journaled(
            &mut self.tx,
            &self.sql,
            stream_id,
            Some(v),
            &events,
            &outbox,
            Some(&journal),
        )
        .await
        .map_err(|e| append_error(&self.sql, e, stream_id, expected, &events))?;
        self.appended(stream_id, expected, rows, events.len()).await
    }

    /// Writes outbox rows (`uow.enqueue`), and the journal row of each message of a flow.
    pub(super) async fn insert_outbox(
        &mut self,
        messages: Vec<OutboxMessage>,
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let journal: Vec<Option<SentEntry>> = messages
            .iter()
            .map(|m| SentEntry::of(m, &self.source))
            .collect();
        let mut binds = Binds::default();
        binds.outbox(&messages).journal(&journal);
        let args = binds
            .finish()
            .map_err(|e| db_err("writing outbox rows", &self.sql.outbox)(sqlx::Error::Encode(e)))?;
        sqlx::query_with(&self.sql.insert_outbox, args)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("writing outbox rows", &self.sql.outbox))?;
        Ok(())
    }
}

impl PgStore {
    /// One statement writes the events and their outbox rows, atomic on its own, so the append
    /// runs without `BEGIN`/`COMMIT`: one round trip. `Any` runs it again when a concurrent
    /// append took the version.
    pub(super) async fn append_in_one_statement(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let routing = self.routing.as_deref();
        let (events, outbox) = prepare_append(stream_id, expected, events, &self.source, routing)?;
        let result =
            append_pooled(&self.pool, &self.sql, stream_id, expected, &events, &outbox).await?;
        self.appended.send_modify(|n| *n += 1);
        Ok(result)
    }
}
