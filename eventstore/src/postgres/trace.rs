//! The [`TraceStore`](crate::trace::TraceStore) of PostgreSQL: the shared one of
//! `crate::sql::trace` (statements in this dialect, in `statements.rs`; the journal table and
//! the inbox's columns from `migrations/0008_trace.sql`).

use super::PgStore;

crate::sql::trace::trace_store!(PgStore);
