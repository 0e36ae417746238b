//! The statements' exact SQL where a plan depends on it, and the plans themselves (ADR 0034).

use super::*;

/// ADR 0034: a participant's outcome lookup stays one primary-key lookup per key under a
/// generic plan made while its table was small and had no statistics, as on a fresh
/// database. Written as `request_key = ANY($2)`, that plan scanned every outcome of the
/// participant and filtered the keys, its cost growing with the table.
#[tokio::test]
async fn outcome_lookup_stays_per_key_under_a_plan_made_on_a_small_table() {
    let db = crate::postgres::testing::TestDb::create(1)
        .await
        .expect("a test database (DATABASE_URL)");
    let store = crate::postgres::PgStore::builder(db.pool().clone())
        .build()
        .await
        .expect("a migrated store");
    let mut conn = db.pool().acquire().await.expect("a connection");
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
    for (sql, what) in [
        ("SET plan_cache_mode = force_generic_plan", "generic plans"),
        (few.as_str(), "300 outcomes"),
        (prepare.as_str(), "the lookup prepared"),
        // The plan is made now, on 300 rows without statistics, and kept.
        (
            "EXECUTE lookup('inventory', ARRAY['a', 'b'])",
            "the first lookup",
        ),
        (many.as_str(), "4,700 outcomes more"),
    ] {
        sqlx::raw_sql(sql).execute(&mut *conn).await.expect(what);
    }
    let found: Vec<(String, String)> =
        sqlx::query_as("EXECUTE lookup('inventory', ARRAY['key-7', 'none', 'key-4000'])")
            .fetch_all(&mut *conn)
            .await
            .expect("a lookup");
    let mut keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["key-4000", "key-7"]);
    let plan: Vec<(String,)> = sqlx::query_as(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) \
         EXECUTE lookup('inventory', ARRAY['key-7', 'none', 'key-4000'])",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("the lookup's plan");
    let plan: Vec<&str> = plan.iter().map(|(line,)| line.as_str()).collect();
    let plan = plan.join("\n");
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
