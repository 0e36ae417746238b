//! The raw baselines of the `sagas` section: autocommit `INSERT`s of one row per transaction on
//! PostgreSQL and on SQLite, by `tasks` tasks on connections of their own: the commit ceiling
//! of this machine, measured in the same run as the sagas.

use super::*;

const RAW_INSERT_PG: &str = "INSERT INTO saga_raw_commits (id, payload) VALUES ($1, $2)";
const RAW_INSERT_LITE: &str = "INSERT INTO saga_raw_commits (id, payload) VALUES (?1, ?2)";
const RAW_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS saga_raw_commits (id uuid PRIMARY KEY, payload text NOT NULL)";
const RAW_TABLE_LITE: &str =
    "CREATE TABLE IF NOT EXISTS saga_raw_commits (id BLOB PRIMARY KEY, payload TEXT NOT NULL)";

/// The window of a raw baseline: a short warm-up, then `seconds`.
fn raw_window(seconds: f64) -> (Instant, Instant) {
    let from = Instant::now() + Duration::from_millis(300);
    (from, from + Duration::from_secs_f64(seconds))
}

/// `tasks` tasks, each on a pooled connection of its own, insert one row per autocommit
/// statement (`$insert`) until the window of `seconds` ends; the commits per second inside it.
/// A macro, not a generic function: sqlx's executor bounds differ per database (ADR 0018).
macro_rules! inserts {
    ($pool:expr, $tasks:expr, $seconds:expr, $insert:expr) => {{
        let (from, to) = raw_window($seconds);
        let mut handles = Vec::with_capacity($tasks);
        for _ in 0..$tasks {
            let mut conn = $pool.acquire().await?;
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    sqlx::query($insert)
                        .bind(Uuid::now_v7())
                        .bind("x")
                        .execute(&mut *conn)
                        .await?;
                    let now = Instant::now();
                    if now > to {
                        return Ok(n);
                    }
                    n += u64::from(now >= from);
                }
            }));
        }
        raw_rate(handles, $seconds).await
    }};
}

/// Sums the inserts the tasks completed inside the window; commits per second.
async fn raw_rate(handles: Vec<tokio::task::JoinHandle<Result<u64>>>, seconds: f64) -> Result<f64> {
    let mut total = 0;
    for handle in handles {
        total += handle.await??;
    }
    Ok(total as f64 / seconds)
}

/// `tasks` tasks, each on a connection of its own, doing autocommit `INSERT`s of one row.
pub(super) async fn raw_postgres(
    connect: &PgConnectOptions,
    tasks: usize,
    seconds: f64,
) -> Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(tasks as u32)
        .connect_with(connect.clone())
        .await?;
    sqlx::query(RAW_TABLE).execute(&pool).await?;
    let rate = inserts!(pool, tasks, seconds, RAW_INSERT_PG);
    sqlx::query("DROP TABLE saga_raw_commits")
        .execute(&pool)
        .await?;
    pool.close().await;
    rate
}

/// The same on a temporary SQLite file opened like `SqliteStore::connect` opens one.
pub(super) async fn raw_sqlite(tasks: usize, seconds: f64) -> Result<f64> {
    let path = temp_sqlite("raw");
    let result = async {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(tasks as u32)
            .connect_with(options)
            .await?;
        sqlx::query(RAW_TABLE_LITE).execute(&pool).await?;
        let rate = inserts!(pool, tasks, seconds, RAW_INSERT_LITE);
        pool.close().await;
        rate
    }
    .await;
    remove_sqlite(&path);
    result
}
