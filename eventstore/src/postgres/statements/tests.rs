//! The statements' exact SQL where a plan depends on it, and the plans themselves (ADR 0034).

use super::*;

/// ADR 0034: a participant's outcome lookup stays one primary-key lookup per key under a
/// generic plan made while its table was small and had no statistics, as on a fresh
/// database. Written as `request_key = ANY($2)`, that plan scanned every outcome of the
/// participant and filtered the keys, its cost growing with the table.
#[tokio::test]
async fn outcome_lookup_stays_per_key_under_a_plan_made_on_a_small_table() {
    let (_db, store, mut conn) = fresh().await;
    let prepare = format!(
        "PREPARE lookup(text, text[]) AS {}",
        store.sql.find_outcomes
    );
    let fill = |from: u32, to: u32| {
        format!(
            "INSERT INTO {} (participant, request_key, outcome, recorded_at) \
             SELECT 'inventory', 'key-' || g, '{{}}'::jsonb, now() \
             FROM generate_series({from}, {to}) g",
            store.sql.sagas.requests
        )
    };
    let (few, many) = (fill(1, 300), fill(301, 5000));
    run_generic(
        &mut conn,
        &[
            (few.as_str(), "300 outcomes"),
            (prepare.as_str(), "the lookup prepared"),
            // The plan is made now, on 300 rows without statistics, and kept.
            (
                "EXECUTE lookup('inventory', ARRAY['a', 'b'])",
                "the first lookup",
            ),
            (many.as_str(), "4,700 outcomes more"),
        ],
    )
    .await;
    let found: Vec<(String, String)> =
        sqlx::query_as("EXECUTE lookup('inventory', ARRAY['key-7', 'none', 'key-4000'])")
            .fetch_all(&mut *conn)
            .await
            .expect("a lookup");
    let mut keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["key-4000", "key-7"]);
    let plan = explain(
        &mut conn,
        "EXECUTE lookup('inventory', ARRAY['key-7', 'none', 'key-4000'])",
    )
    .await;
    // Each node's `actual rows=N`: a lookup per key reads at most one row a key.
    let most_rows = plan
        .split("actual rows=")
        .skip(1)
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .max();
    assert!(
        most_rows.is_some_and(|rows| rows <= 3) && !plan.contains("Rows Removed by Filter"),
        "each key one lookup on the primary key, no outcome read and filtered out:\n{plan}"
    );
}

/// ADR 0036: the relay's claim tests a row's key for a retry in backoff and for a dead letter
/// with one index probe per row under a generic plan made while the outbox was small, as on a
/// fresh database. Written as plain `NOT EXISTS` (an anti-join), that plan read the whole
/// outbox, dead rows included, once per claim: 1,578 pages a claim in the saga benchmark.
#[tokio::test]
async fn relay_claim_probes_retries_per_row_under_a_plan_made_on_a_small_outbox() {
    let (_db, store, mut conn) = fresh().await;
    let outbox = store.naming.table("outbox");
    let prepare = format!(
        "PREPARE claim(int4[], int8, text[]) AS {}",
        store.relay.claim
    );
    let fill = |from: u32, to: u32| {
        format!(
            "INSERT INTO {outbox} (id, aggregatetype, aggregateid, type, payload, topic, key, slot) \
             SELECT gen_random_uuid(), 'account', 'a-' || g, 'deposited', '\\x00', 'accounts', \
             'key-' || g, g % 4 FROM generate_series({from}, {to}) g"
        )
    };
    let (few, many) = (fill(1, 300), fill(301, 20_300));
    let delivered = format!("DELETE FROM {outbox} WHERE key <> 'key-7' AND key <> 'key-20000'");
    let backoff = format!(
        "UPDATE {outbox} SET attempts = 1, next_attempt_at = now() + interval '1 hour' \
         WHERE key = 'key-7'"
    );
    run_generic(
        &mut conn,
        &[
            (few.as_str(), "300 rows"),
            (prepare.as_str(), "the claim prepared"),
            // The plan is made now, on 300 rows without statistics, and kept.
            (
                "EXECUTE claim(ARRAY[0, 1, 2, 3], 10, ARRAY[]::text[])",
                "the first claim",
            ),
            (many.as_str(), "20,000 rows more"),
            // Delivered: all but two keys' rows are dead, and one of the two is in backoff.
            (delivered.as_str(), "the rows delivered"),
            (backoff.as_str(), "a retry in backoff"),
        ],
    )
    .await;
    let claim = "EXECUTE claim(ARRAY[0, 1, 2, 3], 10, ARRAY[]::text[])";
    let claimed: Vec<String> = sqlx::query(claim)
        .fetch_all(&mut *conn)
        .await
        .expect("a claim")
        .iter()
        .map(|row| sqlx::Row::try_get(row, "key").expect("the key column"))
        .collect();
    assert_eq!(claimed, ["key-20000"], "the key in backoff is not claimed");
    let plan = explain(&mut conn, claim).await;
    let scanned: Vec<&str> = plan
        .lines()
        .filter(|line| line.contains("Seq Scan on") && !line.contains("outbox_floor"))
        .collect();
    assert!(
        scanned.is_empty(),
        "no table scanned whole for a claim (the floor's one row aside):\n{plan}"
    );
}

/// A migrated store on a new test database (dropped with the guard), and a connection of its
/// pool.
async fn fresh() -> (
    crate::postgres::testing::TestDb,
    crate::postgres::PgStore,
    sqlx::pool::PoolConnection<sqlx::Postgres>,
) {
    let db = crate::postgres::testing::TestDb::create(1)
        .await
        .expect("a test database (DATABASE_URL)");
    let store = crate::postgres::PgStore::builder(db.pool().clone())
        .build()
        .await
        .expect("a migrated store");
    let conn = db.pool().acquire().await.expect("a connection");
    (db, store, conn)
}

/// Runs `steps` (statement, what it does) in order on `conn` with generic plans forced
/// (`plan_cache_mode = force_generic_plan`), as a prepared statement gets them after five runs.
async fn run_generic(conn: &mut sqlx::PgConnection, steps: &[(&str, &str)]) {
    let generic = ("SET plan_cache_mode = force_generic_plan", "generic plans");
    for (sql, what) in std::iter::once(&generic).chain(steps) {
        sqlx::raw_sql(sql).execute(&mut *conn).await.expect(what);
    }
}

/// The plan of `sql` as it runs (`EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)`), one line a node.
async fn explain(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    let plan: Vec<(String,)> =
        sqlx::query_as(&format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"))
            .fetch_all(&mut *conn)
            .await
            .expect("a plan");
    plan.into_iter()
        .map(|(line,)| line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The claim's exact SQL (the text is what the query plan depends on).
#[test]
fn saga_claim_statement() {
    let naming = Naming::new("app_")
        .and_then(|n| n.with_schema("orders"))
        .expect("a valid naming");
    assert_eq!(
        Statements::new(&naming).claim_saga_timers,
        "UPDATE \"orders\".\"app_saga_timers\" t SET claims = t.claims + 1, due_at = \
         statement_timestamp() + make_interval(secs => $3 * LEAST(t.claims + 1, 64)) FROM \
         (SELECT saga_id, step, attempt, kind, due_at FROM \"orders\".\"app_saga_timers\" \
         WHERE saga_type = ANY($1) AND due_at <= statement_timestamp() ORDER BY due_at \
         LIMIT $2 FOR UPDATE SKIP LOCKED) c WHERE t.saga_id = c.saga_id AND t.step = c.step \
         AND t.attempt = c.attempt AND t.kind = c.kind RETURNING t.saga_id, t.saga_type, \
         t.step, t.attempt, t.kind, c.due_at"
    );
}
