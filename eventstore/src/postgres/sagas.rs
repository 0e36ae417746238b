//! The saga store of PostgreSQL. Empty for now: the saga store of the next issue lives here,
//! beside the other concerns of this backend (its statements in `statements.rs`, its tables in
//! a new file under `migrations/`).
