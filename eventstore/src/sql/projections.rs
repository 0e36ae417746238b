//! The [`ProjectionStore`](crate::projection::ProjectionStore) of the SQL backends, written once
//! (see [`crate::projection`]). Its statements are written in PostgreSQL's form and turned into
//! the backend's by the [`Dialect`](super::dialect::Dialect), which also holds the locking
//! clauses, the commit key column and PostgreSQL's relation locks before a view swap. Stamped
//! for each store by [`projection_store!`] (see [`super::read`] for why a macro).

/// Implements `ProjectionStore` for `$store` (with `pool()` and `naming()`) and its unit of work
/// `$uow` (with `connection()`), in the dialect `$d`.
macro_rules! projection_store {
    ($store:ty, $uow:ty, $d:ty) => {
        const _: () = {
        use $crate::error::StoreError;
        use $crate::log::Checkpoint;
        use $crate::projection::sql::{self as shared, Names, to_i64};
        use $crate::projection::{
            LockedCheckpoint, ParkedEvent, ProjectionState, physical_table, qualified,
            validate_table_name,
        };
        use $crate::sql::db_err;
        use $crate::sql::dialect::Dialect;

        fn now() -> chrono::DateTime<chrono::Utc> {
            eventfold_core::metadata::now_micros()
        }

        /// A statement in the dialect's placeholder form.
        fn q(sql: String) -> String {
            <$d as Dialect>::placeholders(&sql)
        }

        impl $store {
            fn proj(&self) -> Names {
                Names::new(self.naming())
            }

            async fn load_states(&self, name: Option<&str>) -> Result<Vec<ProjectionState>, StoreError> {
                let names = self.proj();
                let mut conn = self
                    .pool()
                    .acquire()
                    .await
                    .map_err(db_err("reading projection states", &names.p))?;
                states_on(
                    &mut conn,
                    &names,
                    name,
                    "reading projection states",
                    "reading projection builds",
                )
                .await
            }
        }

        /// The states of the projections (all, or the one named) and their builds, read on
        /// `conn`; `states` and `builds` name the two reads in an error.
        async fn states_on(
            conn: &mut <<$d as Dialect>::DB as sqlx::Database>::Connection,
            names: &Names,
            name: Option<&str>,
            states: &'static str,
            builds: &'static str,
        ) -> Result<Vec<ProjectionState>, StoreError> {
            let rows: Vec<shared::StateRow> = sqlx::query_as(&q(names.states()))
                .bind(name)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err(states, &names.p))?;
            let builds: Vec<shared::BuildRow> = sqlx::query_as(&q(names.builds()))
                .bind(name)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err(builds, &names.c))?;
            shared::states(rows, builds, &names.p)
        }

        /// Deletes generation `generation` of projection `name` from `table` (its checkpoints or
        /// its parked events); `what` is the step that failed, in an error.
        async fn delete_generation(
            conn: &mut <<$d as Dialect>::DB as sqlx::Database>::Connection,
            table: &str,
            name: &str,
            generation: u32,
            what: &'static str,
        ) -> Result<(), StoreError> {
            sqlx::query(&q(format!(
                "DELETE FROM {table} WHERE name = $1 AND generation = $2"
            )))
            .bind(name)
            .bind(i64::from(generation))
            .execute(conn)
            .await
            .map_err(db_err(what, table))?;
            Ok(())
        }

        impl $crate::projection::ProjectionStore for $store {
            async fn projection_states(&self) -> Result<Vec<ProjectionState>, StoreError> {
                self.load_states(None).await
            }

            async fn projection_state(&self, name: &str) -> Result<Option<ProjectionState>, StoreError> {
                Ok(self.load_states(Some(name)).await?.into_iter().next())
            }

            async fn set_projection_paused(&self, name: &str, paused: bool) -> Result<bool, StoreError> {
                let p = self.proj().p;
                let _turn = self.gate.enter("pausing a projection", &p).await?;
                let done = sqlx::query(&q(format!(
                    "UPDATE {p} SET paused = $2, updated_at = $3 WHERE name = $1"
                )))
                .bind(name)
                .bind(paused)
                .bind(now())
                .execute(self.pool())
                .await
                .map_err(db_err("pausing a projection", &p))?;
                Ok(done.rows_affected() > 0)
            }

            async fn request_projection_reset(&self, name: &str) -> Result<bool, StoreError> {
                let p = self.proj().p;
                let _turn = self.gate.enter("requesting a projection reset", &p).await?;
                let done = sqlx::query(&q(format!(
                    "UPDATE {p} SET reset_requested = TRUE, updated_at = $2 WHERE name = $1"
                )))
                .bind(name)
                .bind(now())
                .execute(self.pool())
                .await
                .map_err(db_err("requesting a projection reset", &p))?;
                Ok(done.rows_affected() > 0)
            }

            async fn parked_projection_events(
                &self,
                name: &str,
                limit: usize,
            ) -> Result<Vec<ParkedEvent>, StoreError> {
                let Names { p, d, .. } = self.proj();
                let rows: Vec<shared::ParkedRow> = sqlx::query_as(&q(format!(
                    "SELECT CAST(d.generation AS BIGINT), d.event_id, d.global_position, d.stream_id, \
                         d.event_type, d.error, d.parked_at FROM {d} d JOIN {p} p ON p.name = d.name \
                         AND p.active_generation = d.generation WHERE d.name = $1 \
                         ORDER BY d.global_position LIMIT $2"
                )))
                .bind(name)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(self.pool())
                .await
                .map_err(db_err("reading parked projection events", &d))?;
                rows.into_iter()
                    .map(|row| shared::parked_event(name, row, &d))
                    .collect()
            }

            async fn set_projection_status(
                &self,
                name: &str,
                status: &str,
                last_error: Option<&str>,
            ) -> Result<bool, StoreError> {
                let p = self.proj().p;
                let _turn = self.gate.enter("recording a projection status", &p).await?;
                let done = sqlx::query(&q(format!(
                    "UPDATE {p} SET status = $2, last_error = $3, updated_at = $4 WHERE name = $1"
                )))
                .bind(name)
                .bind(status)
                .bind(last_error)
                .bind(now())
                .execute(self.pool())
                .await
                .map_err(db_err("recording a projection status", &p))?;
                Ok(done.rows_affected() > 0)
            }

            async fn checkpoint_at(&self, position: u64) -> Result<Option<Checkpoint>, StoreError> {
                let events = self.naming().table("events");
                let row: Option<(i64,)> = sqlx::query_as(&q(format!(
                    "SELECT {} FROM {events} WHERE global_position = $1",
                    <$d as Dialect>::COMMIT_KEY
                )))
                .bind(to_i64(position))
                .fetch_optional(self.pool())
                .await
                .map_err(db_err("looking up an event's checkpoint", &events))?;
                row.map(|(key,)| shared::checkpoint_of(key, to_i64(position), &events))
                    .transpose()
            }

            fn projection_schema(&self) -> Option<String> {
                <$d as Dialect>::schema(self.naming()).map(str::to_owned)
            }

            fn has_sql_tables(&self) -> bool {
                true
            }

            fn reads_beside_unit_of_work(&self) -> bool {
                <$d as Dialect>::reads_beside_unit_of_work(self.pool())
            }

            async fn create_projection(
                &self,
                uow: &mut $uow,
                name: &str,
                version: u32,
            ) -> Result<bool, StoreError> {
                $crate::projection::validate_projection_name(name)?;
                let Names { p, c, .. } = self.proj();
                let created = sqlx::query(&q(format!(
                    "INSERT INTO {p} (name, active_generation, status, updated_at) VALUES ($1, 1, 'idle', $2) \
                     ON CONFLICT DO NOTHING"
                )))
                .bind(name)
                .bind(now())
                .execute(uow.connection())
                .await
                .map_err(db_err("registering a projection", &p))?
                .rows_affected()
                    > 0;
                if created {
                    sqlx::query(&q(format!(
                        "INSERT INTO {c} (name, generation, version, commit_key, log_position, position, updated_at) \
                         VALUES ($1, 1, $2, 0, 0, 0, $3) ON CONFLICT (name, generation) DO UPDATE SET \
                         version = EXCLUDED.version, commit_key = 0, log_position = 0, position = 0"
                    )))
                    .bind(name)
                    .bind(i64::from(version))
                    .bind(now())
                    .execute(uow.connection())
                    .await
                    .map_err(db_err("registering a projection", &c))?;
                }
                Ok(created)
            }

            async fn lock_projection(
                &self,
                uow: &mut $uow,
                name: &str,
            ) -> Result<Option<ProjectionState>, StoreError> {
                let names = self.proj();
                let found: Option<(i32,)> = sqlx::query_as(&q(format!(
                    "SELECT 1 FROM {} WHERE name = $1{}",
                    names.p,
                    <$d as Dialect>::FOR_UPDATE
                )))
                .bind(name)
                .fetch_optional(uow.connection())
                .await
                .map_err(db_err("locking a projection", &names.p))?;
                if found.is_none() {
                    return Ok(None);
                }
                let states = states_on(
                    uow.connection(),
                    &names,
                    Some(name),
                    "reading a projection state",
                    "reading a projection build",
                )
                .await?;
                Ok(states.into_iter().next())
            }

            async fn lock_projection_checkpoint(
                &self,
                uow: &mut $uow,
                name: &str,
                generation: u32,
            ) -> Result<Option<LockedCheckpoint>, StoreError> {
                let Names { p, c, .. } = self.proj();
                let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(&q(format!(
                    "SELECT CAST(p.active_generation AS BIGINT), CAST(c.version AS BIGINT), c.commit_key, \
                     c.log_position, c.position FROM {p} p JOIN {c} c ON c.name = p.name \
                     WHERE p.name = $1 AND c.generation = $2{}",
                    <$d as Dialect>::LOCK_CHECKPOINT
                )))
                .bind(name)
                .bind(i64::from(generation))
                .fetch_optional(uow.connection())
                .await
                .map_err(db_err("locking a projection checkpoint", &c))?;
                row.map(|(active, version, key, log_pos, pos)| {
                    Ok(LockedCheckpoint {
                        active_generation: shared::u32_of(active, &p, "generation")?,
                        version: shared::u32_of(version, &c, "version")?,
                        checkpoint: shared::checkpoint_of(key, log_pos, &c)?,
                        position: shared::u64_of(pos, &c, "position")?,
                    })
                })
                .transpose()
            }

            async fn save_projection_checkpoint(
                &self,
                uow: &mut $uow,
                name: &str,
                generation: u32,
                checkpoint: Checkpoint,
                position: u64,
            ) -> Result<(), StoreError> {
                let c = self.proj().c;
                let (key, log_pos) = checkpoint.to_parts();
                sqlx::query(&q(format!(
                    "UPDATE {c} SET commit_key = $3, log_position = $4, position = $5, updated_at = $6 \
                     WHERE name = $1 AND generation = $2"
                )))
                .bind(name)
                .bind(i64::from(generation))
                .bind(key)
                .bind(log_pos)
                .bind(to_i64(position))
                .bind(now())
                .execute(uow.connection())
                .await
                .map_err(db_err("saving a projection checkpoint", &c))?;
                Ok(())
            }

            async fn start_projection_generation(
                &self,
                uow: &mut $uow,
                name: &str,
                generation: u32,
                version: u32,
            ) -> Result<(), StoreError> {
                let Names { c, d, .. } = self.proj();
                sqlx::query(&q(format!(
                    "INSERT INTO {c} (name, generation, version, commit_key, log_position, position, updated_at) \
                     VALUES ($1, $2, $3, 0, 0, 0, $4) ON CONFLICT (name, generation) DO UPDATE SET \
                     version = EXCLUDED.version, commit_key = 0, log_position = 0, position = 0, \
                     updated_at = EXCLUDED.updated_at"
                )))
                .bind(name)
                .bind(i64::from(generation))
                .bind(i64::from(version))
                .bind(now())
                .execute(uow.connection())
                .await
                .map_err(db_err("starting a projection generation", &c))?;
                delete_generation(
                    uow.connection(),
                    &d,
                    name,
                    generation,
                    "starting a projection generation",
                )
                .await
            }

            async fn activate_projection_generation(
                &self,
                uow: &mut $uow,
                name: &str,
                generation: u32,
            ) -> Result<(), StoreError> {
                let p = self.proj().p;
                sqlx::query(&q(format!(
                    "UPDATE {p} SET active_generation = $2, reset_requested = FALSE, updated_at = $3 \
                     WHERE name = $1"
                )))
                .bind(name)
                .bind(i64::from(generation))
                .bind(now())
                .execute(uow.connection())
                .await
                .map_err(db_err("switching a projection generation", &p))?;
                Ok(())
            }

            async fn remove_projection_generation(
                &self,
                uow: &mut $uow,
                name: &str,
                generation: u32,
            ) -> Result<(), StoreError> {
                let Names { c, d, .. } = self.proj();
                for table in [&c, &d] {
                    delete_generation(
                        uow.connection(),
                        table,
                        name,
                        generation,
                        "removing a projection generation",
                    )
                    .await?;
                }
                Ok(())
            }

            async fn old_projection_generations(
                &self,
                uow: &mut $uow,
                name: &str,
            ) -> Result<Vec<u32>, StoreError> {
                let Names { p, c, .. } = self.proj();
                let rows: Vec<(i64,)> = sqlx::query_as(&q(format!(
                    "SELECT CAST(c.generation AS BIGINT) FROM {c} c JOIN {p} p ON p.name = c.name \
                     WHERE c.name = $1 AND c.generation < p.active_generation ORDER BY 1"
                )))
                .bind(name)
                .fetch_all(uow.connection())
                .await
                .map_err(db_err("listing old projection generations", &c))?;
                rows.into_iter()
                    .map(|(g,)| shared::u32_of(g, &c, "generation"))
                    .collect()
            }

            async fn park_projection_event(
                &self,
                uow: &mut $uow,
                event: ParkedEvent,
            ) -> Result<(), StoreError> {
                let d = self.proj().d;
                sqlx::query(&q(format!(
                    "INSERT INTO {d} (name, generation, event_id, global_position, stream_id, event_type, error, parked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name, generation, event_id) \
                     DO UPDATE SET error = EXCLUDED.error, parked_at = EXCLUDED.parked_at"
                )))
                .bind(&event.projection)
                .bind(i64::from(event.generation))
                .bind(event.event_id)
                .bind(to_i64(event.global_position))
                .bind(&event.stream_id)
                .bind(&event.event_type)
                .bind(&event.error)
                .bind(now())
                .execute(uow.connection())
                .await
                .map_err(db_err("parking a projection event", &d))?;
                Ok(())
            }

            async fn point_projection_views(
                &self,
                uow: &mut $uow,
                tables: &[String],
                generation: u32,
            ) -> Result<bool, StoreError> {
                let schema = <$d as Dialect>::schema(self.naming());
                let mut views = Vec::new();
                for table in tables {
                    validate_table_name(table)?;
                    views.push(qualified(schema, table));
                }
                if !<$d as Dialect>::lock_relations(uow.connection(), &views).await? {
                    return Ok(false);
                }
                for table in tables {
                    let view = qualified(schema, table);
                    let physical = qualified(schema, &physical_table(table, generation));
                    // Readers blocked on the view while it is replaced look its name up again once the
                    // transaction commits, and see the new one.
                    for statement in [
                        format!("DROP VIEW IF EXISTS {view}"),
                        format!("CREATE VIEW {view} AS SELECT * FROM {physical}"),
                    ] {
                        sqlx::query(&statement)
                            .execute(uow.connection())
                            .await
                            .map_err(db_err("pointing a projection view", &view))?;
                    }
                }
                Ok(true)
            }

            async fn drop_projection_tables(
                &self,
                uow: &mut $uow,
                tables: &[String],
                generation: u32,
            ) -> Result<bool, StoreError> {
                let schema = <$d as Dialect>::schema(self.naming());
                let mut relations = Vec::new();
                for table in tables {
                    validate_table_name(table)?;
                    relations.push(qualified(schema, &physical_table(table, generation)));
                    relations.push(qualified(schema, table));
                }
                if !<$d as Dialect>::lock_relations(uow.connection(), &relations).await? {
                    return Ok(false);
                }
                for table in tables {
                    let physical = qualified(schema, &physical_table(table, generation));
                    sqlx::query(&q(format!(
                        "DROP TABLE IF EXISTS {physical}{}",
                        <$d as Dialect>::DROP_CASCADE
                    )))
                        .execute(uow.connection())
                        .await
                        .map_err(db_err("dropping projection tables", &physical))?;
                }
                Ok(true)
            }
        }
        };
    };
}
pub(crate) use projection_store;
