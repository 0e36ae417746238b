//! Raw baselines: the statements and rows of the hand-written sqlx variants.

use crate::*;

pub(crate) const RAW_COLUMNS: &str = "event_id, stream_type, stream_id, stream_version, event_type, schema_version, \
     payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers";

/// One row into `table`, `commit_key` = 0 (no log mechanism).
pub(crate) fn raw_insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} ({RAW_COLUMNS}, commit_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, 0)"
    )
}

/// One row into `raw_plain` with the expected-version check every event store needs (the
/// stream's current version must be `$4 - 1`), `commit_key` = 0: the append without the log
/// mechanism.
pub(crate) fn versioned_plain_sql() -> String {
    format!(
        "WITH cur AS (SELECT COALESCE(MAX(stream_version), 0)::int8 AS v FROM raw_plain \
           WHERE stream_type = $2 AND stream_id = $3) \
         INSERT INTO raw_plain ({RAW_COLUMNS}, commit_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, 0 \
         FROM cur WHERE cur.v = $4 - 1"
    )
}

/// The same version-checked row into `raw_keyed`, its `commit_key` computed as the library's
/// append statement does: the writing transaction's id, raised to the commit key of the stream's
/// last event (the log index is kept on this table).
pub(crate) fn keyed_insert_sql() -> String {
    format!(
        "WITH last AS (SELECT stream_version, commit_key FROM raw_keyed \
           WHERE stream_type = $2 AND stream_id = $3 ORDER BY stream_version DESC LIMIT 1) \
         INSERT INTO raw_keyed ({RAW_COLUMNS}, commit_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, \
           GREATEST(pg_current_xact_id()::text::int8, COALESCE((SELECT commit_key FROM last), 0)) \
         WHERE COALESCE((SELECT stream_version FROM last), 0) = $4 - 1"
    )
}

/// The same columns, order and filter the library's `read_stream` uses.
pub(crate) const RAW_LOAD_SQL: &str = "SELECT event_id, stream_version, global_position, event_type, schema_version, \
     payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers::text \
     FROM raw_events WHERE stream_type = $1 AND stream_id = $2 ORDER BY stream_version";

pub(crate) fn raw_batch_sql() -> String {
    format!(
        "INSERT INTO raw_events ({RAW_COLUMNS}, commit_key) \
         SELECT e.event_id, $1, $2, e.stream_version, e.event_type, e.schema_version, e.payload, \
           e.recorded_at, e.source, e.correlation_id, e.causation_id, e.tenant_id, e.headers::jsonb, 0 \
         FROM UNNEST($3::uuid[], $4::int8[], $5::text[], $6::int4[], $7::bytea[], $8::timestamptz[], \
           $9::text[], $10::uuid[], $11::uuid[], $12::text[], $13::text[]) \
           AS e(event_id, stream_version, event_type, schema_version, payload, recorded_at, source, \
           correlation_id, causation_id, tenant_id, headers)"
    )
}

/// The tuple of an event row as the raw baselines read it, after the columns `$before` that the
/// statement selects first: event_id, stream_version, global_position, event_type,
/// schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id,
/// headers (JSON text).
macro_rules! raw_event_row {
    ($($before:ty),*) => {
        (
            $($before,)*
            Uuid,
            i64,
            i64,
            String,
            i32,
            Vec<u8>,
            DateTime<Utc>,
            String,
            Uuid,
            Option<Uuid>,
            Option<String>,
            String,
        )
    };
}
pub(crate) use raw_event_row;

/// A stream's event row as the raw baselines load it (PostgreSQL and SQLite).
pub(crate) type RawRow = raw_event_row!();

/// `$query` with the values of an event row bound in the order of [`RAW_COLUMNS`]: `$event` as
/// version `$version` (an `i64`) of the counter stream `$stream`, headers as JSON text. A macro,
/// not a generic function: sqlx's bind bounds differ per database (ADR 0018).
macro_rules! bind_event_row {
    ($query:expr, $stream:expr, $version:expr, $event:expr) => {{
        let event: &NewEvent = $event;
        $query
            .bind(event.event_id)
            .bind(<$crate::Counter as eventfold_core::Aggregate>::TYPE)
            .bind($stream)
            .bind($version)
            .bind(event.event_type.as_str())
            .bind(i32::try_from(event.schema_version)?)
            .bind(event.payload.as_slice())
            .bind(event.timestamp)
            .bind(event.source.as_str())
            .bind(event.correlation_id)
            .bind(event.causation_id)
            .bind(event.tenant_id.as_deref())
            .bind($crate::raw::headers_text(event)?)
    }};
}
pub(crate) use bind_event_row;

/// One page of a raw keyset scan on PostgreSQL: the rows of `sql` after position `after`, at
/// most `limit` of them (`sql` takes them as `$1` and `$2`).
pub(crate) async fn raw_page<R>(pool: &PgPool, sql: &str, after: i64, limit: i64) -> Result<Vec<R>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(sql)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Headers as JSON text, as the library sends them.
pub(crate) fn headers_text(event: &NewEvent) -> Result<String> {
    if event.headers.is_empty() {
        Ok("{}".to_owned())
    } else {
        Ok(serde_json::to_string(&event.headers)?)
    }
}
