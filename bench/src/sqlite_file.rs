//! The temporary SQLite files of the SQLite cases (the `sqlite` section, the SQLite saga variant
//! and its raw baseline): where they are, how they are opened, and their removal.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use uuid::Uuid;

use crate::Result;

/// A fresh path for a temporary SQLite file: `eventfold-bench-{tag}-{uuid}.db` in the
/// temporary directory.
fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "eventfold-bench-{tag}-{}.db",
        Uuid::now_v7().simple()
    ))
}

/// Removes the file at `path` and its `-wal` and `-shm` files (what is not there is skipped).
fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Runs `work` on the path of a fresh temporary SQLite file tagged `tag`, then removes the
/// file, whatever `work` returned.
pub(crate) async fn with_temp_file<T, F, Fut>(tag: &str, work: F) -> Result<T>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let path = temp_path(tag);
    let result = work(path.clone()).await;
    remove(&path);
    result
}

/// The settings `SqliteStore::connect` opens the file at `path` with: created if missing, WAL,
/// `synchronous = NORMAL`, a busy timeout of 30 s.
pub(crate) fn store_connect_options(path: &Path) -> Result<SqliteConnectOptions> {
    Ok(
        SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30)),
    )
}
