//! The saga store of the in-memory backend: it comes with the next issue and lives here, beside
//! the same file of the PostgreSQL and SQLite backends. Nothing is here yet.
