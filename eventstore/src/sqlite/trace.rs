//! The [`TraceStore`](crate::trace::TraceStore) of SQLite: the shared one of
//! `crate::sql::trace` (statements in this dialect, in `statements.rs`; the journal table and
//! the inbox's columns from `migrations/0007_trace.sql`).

use super::SqliteStore;

crate::sql::trace::trace_store!(SqliteStore);
