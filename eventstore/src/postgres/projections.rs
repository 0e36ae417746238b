//! The [`ProjectionStore`](crate::projection::ProjectionStore) of PostgreSQL: the shared one of
//! `crate::sql::projections` in the PostgreSQL dialect, and the relation locks that dialect
//! takes before it replaces a projection's views or drops its tables.

use sqlx::PgConnection;

use super::{PgStore, PgUnitOfWork};
use crate::error::StoreError;
use crate::sql::db_err;
use crate::sql::dialect::Pg;

crate::sql::projections::projection_store!(PgStore, PgUnitOfWork, Pg);

/// Takes ACCESS EXCLUSIVE locks on the existing `relations` (quoted names) in one statement,
/// giving up after a lock timeout shorter than PostgreSQL's deadlock timeout: a reader that holds
/// one view and waits for another is then never the deadlock victim. `false`: given up, nothing
/// changed (the savepoint is rolled back).
pub(crate) async fn lock_all(
    conn: &mut PgConnection,
    relations: &[String],
) -> Result<bool, StoreError> {
    let mut existing = Vec::new();
    for relation in relations {
        let (found,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
            .bind(relation)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err("looking up a projection relation", relation))?;
        if found {
            existing.push(relation.clone());
        }
    }
    if existing.is_empty() {
        return Ok(true);
    }
    let list = existing.join(", ");
    for statement in [
        "SAVEPOINT eventfold_projection_views".to_owned(),
        "SET LOCAL lock_timeout = '200ms'".to_owned(),
    ] {
        sqlx::query(&statement)
            .execute(&mut *conn)
            .await
            .map_err(db_err("locking projection relations", &list))?;
    }
    let locked = sqlx::query(&format!("LOCK TABLE {list} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *conn)
        .await;
    match locked {
        Ok(_) => {
            for statement in [
                "SET LOCAL lock_timeout = DEFAULT",
                "RELEASE SAVEPOINT eventfold_projection_views",
            ] {
                sqlx::query(statement)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err("locking projection relations", &list))?;
            }
            Ok(true)
        }
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("55P03") | Some("40P01")) =>
        {
            sqlx::query("ROLLBACK TO SAVEPOINT eventfold_projection_views")
                .execute(&mut *conn)
                .await
                .map_err(db_err("locking projection relations", &list))?;
            Ok(false)
        }
        Err(e) => Err(db_err("locking projection relations", &list)(e)),
    }
}
