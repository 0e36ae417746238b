//! What the two SQL stores and their builders share outside the statements: the store's and the
//! builder's types, the builder's settings, the store's accessors, the end of `build`, the
//! `EventStore` impl (its `append` and the methods that only hand over to the backend's own), and
//! the [`MigrationStore`](crate::admin::MigrationStore) impl.
//! Stamped into each backend's `store.rs` by the macros below (see [`super::read`] for why
//! macros): the public items they stamp are each backend's own, with the same names and docs as
//! when they were written out per backend.

/// Stamps the builder settings `source`, `migrate`, `outbox` and `coalescing` (inside the
/// builder's `impl`): its fields `source`, `migrate`, `routing` and `coalescing`. `$coalescing`
/// is the doc of `coalescing` (it names the backend's store).
macro_rules! builder_settings {
    ($(#[$coalescing:meta])*) => {
        /// The service name recorded as `source` on new events (default `eventfold`).
        pub fn source(mut self, source: impl Into<String>) -> Self {
            self.source = source.into();
            self
        }

        /// Run the embedded migrations when building (default `true`).
        pub fn migrate(mut self, migrate: bool) -> Self {
            self.migrate = migrate;
            self
        }

        /// Writes an outbox row for every routed event, in the same transaction as the append.
        pub fn outbox(mut self, routing: $crate::outbox::OutboxRouting) -> Self {
            self.routing = Some(routing);
            self
        }

        $(#[$coalescing])*
        pub fn coalescing(mut self, coalescing: $crate::coalesce::Coalescing) -> Self {
            self.coalescing = Some(coalescing);
            self
        }
    };
}
pub(crate) use builder_settings;

/// Stamps the store's `builder`, `pool`, `naming`, `with_source`, `with_outbox` and the private
/// `configured` (inside the store's `impl`): `$builder` is its builder (with the fields of
/// [`builder_settings!`] and `pool` and `naming`), `$pool` its pool type; the store has the
/// fields `pool`, `naming`, `source` and `routing`, and the methods `with_coalescing`,
/// `migrate` and `recoalesce` (the store again after `source` or `routing` changed: a
/// coalescer whose writer copied them is rebuilt).
macro_rules! store_accessors {
    ($builder:ident, $pool:ty) => {
        /// A builder over an existing pool.
        pub fn builder(pool: $pool) -> $builder {
            $builder {
                routing: None,
                pool,
                naming: $crate::naming::Naming::default(),
                source: "eventfold".to_owned(),
                migrate: true,
                coalescing: None,
            }
        }

        /// The connection pool (for the application's own queries).
        pub fn pool(&self) -> &$pool {
            &self.pool
        }

        /// The table naming.
        pub fn naming(&self) -> &$crate::naming::Naming {
            &self.naming
        }

        /// Sets the service name recorded as `source` on new events.
        pub fn with_source(mut self, source: impl Into<String>) -> Self {
            self.source = std::sync::Arc::from(source.into());
            self.recoalesce()
        }

        /// Writes an outbox row for every routed event, in the same transaction as the append.
        pub fn with_outbox(mut self, routing: $crate::outbox::OutboxRouting) -> Self {
            self.routing = Some(std::sync::Arc::new(routing));
            self.recoalesce()
        }

        /// The end of the builder's `build`: coalescing on if asked, then the migrations unless
        /// turned off.
        async fn configured(
            mut self,
            coalescing: Option<$crate::coalesce::Coalescing>,
            migrate: bool,
        ) -> Result<Self, $crate::error::StoreError> {
            if let Some(coalescing) = coalescing {
                self = self.with_coalescing(coalescing);
            }
            if migrate {
                self.migrate().await?;
            }
            Ok(self)
        }
    };
}
pub(crate) use store_accessors;

/// Stamps the `EventStore` methods `read_log`, `log_head`, `wakeup` and `begin` (inside its
/// impl), which hand over to the backend's `$read_log` (documented by `$read_log_doc`),
/// `read_log_head`, `open_wakeup` and `begin_unit_of_work`.
macro_rules! store_handovers {
    ($read_log:ident, $(#[$read_log_doc:meta])*) => {
        $(#[$read_log_doc])*
        async fn read_log(
            &self,
            after: $crate::log::Checkpoint,
            max_count: usize,
            filter: &$crate::log::LogFilter,
        ) -> Result<$crate::log::LogBatch, $crate::error::StoreError> {
            self.$read_log(after, max_count, filter).await
        }

        async fn log_head(&self) -> Result<$crate::log::LogHead, $crate::error::StoreError> {
            self.read_log_head().await
        }

        async fn wakeup(&self) -> Result<Self::Wakeup, $crate::error::StoreError> {
            self.open_wakeup().await
        }

        async fn begin(&self) -> Result<Self::UnitOfWork, $crate::error::StoreError> {
            self.begin_unit_of_work().await
        }
    };
}
pub(crate) use store_handovers;

/// Implements [`MigrationStore`](crate::admin::MigrationStore) for `$store` (with `migrate`,
/// and the fields `pool` and `naming`) in the dialect `$d`, and the test that the checksums of
/// its module's `MIGRATIONS` are the pinned ones.
macro_rules! migration_store {
    ($store:ty, $d:ty) => {
        #[cfg(test)]
        mod tests {
            use super::*;

            /// The checksum of every migration file, as recorded in databases migrated before the
            /// files were split out: an edit to an applied migration must fail here, not in
            /// production.
            #[test]
            fn migration_checksums_are_pinned() {
                $crate::sql::migrations::assert_pinned::<$d>(MIGRATIONS);
            }
        }

        impl $crate::admin::MigrationStore for $store {
            fn backend(&self) -> &'static str {
                <$d as $crate::sql::dialect::Dialect>::BACKEND
            }

            async fn run_migrations(
                &self,
            ) -> Result<Vec<$crate::admin::AppliedMigration>, $crate::error::StoreError> {
                self.migrate().await?;
                $crate::sql::applied_migrations(&self.pool, &self.naming).await
            }
        }
    };
}
pub(crate) use migration_store;

/// Declares a SQL store `$store` (documented by `$doc`), its `Debug` (its naming and source) and
/// its builder `$builder` with its `naming` (documented by `$naming`) and the other settings of
/// [`builder_settings!`] (`coalescing` documented by `$coalescing`), and stamps into the store's
/// impl the [`store_accessors!`], `connected` and `pooled_read_stream`. The store's fields: those
/// both backends have (its pool `$pool`, the calling module's `RelaySql` and `Statements`, the
/// coalescer of its append batch writer `$writer`, its write gate), then its own (`$field`).
///
/// The backend's store has `shared_read`: the stream read shared with concurrent ones, if it
/// shares them (ADR 0024), else `None`.
macro_rules! store_type {
    (
        $(#[$doc:meta])* $store:ident,
        $(#[$naming:meta])* $builder:ident,
        $(#[$coalescing:meta])* $pool:ty, $writer:ty {
            $($(#[$field_doc:meta])* $field:ident: $field_ty:ty,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $store {
            pub(super) relay: std::sync::Arc<RelaySql>,
            pub(super) routing: Option<std::sync::Arc<$crate::outbox::OutboxRouting>>,
            pub(super) appended: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
            pub(super) pool: $pool,
            pub(super) naming: std::sync::Arc<$crate::naming::Naming>,
            pub(super) sql: std::sync::Arc<Statements>,
            pub(super) source: std::sync::Arc<str>,
            /// Shared commits of concurrent appends, when on (ADR 0024).
            pub(super) coalescer: Option<std::sync::Arc<$crate::coalesce::Coalescer<$writer>>>,
            /// The queue of this store's writers (ADR 0027).
            pub(super) gate: $crate::sql::gate::WriteGate,
            $($(#[$field_doc])* pub(super) $field: $field_ty,)*
        }

        impl std::fmt::Debug for $store {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($store))
                    .field("naming", &self.naming)
                    .field("source", &self.source)
                    .finish_non_exhaustive()
            }
        }

        #[doc = concat!("Builds a [`", stringify!($store), "`].")]
        #[derive(Debug)]
        pub struct $builder {
            pub(super) routing: Option<$crate::outbox::OutboxRouting>,
            pub(super) pool: $pool,
            pub(super) naming: $crate::naming::Naming,
            pub(super) source: String,
            pub(super) migrate: bool,
            pub(super) coalescing: Option<$crate::coalesce::Coalescing>,
        }

        impl $builder {
            $(#[$naming])*
            pub fn naming(mut self, naming: $crate::naming::Naming) -> Self {
                self.naming = naming;
                self
            }

            $crate::sql::store::builder_settings!($(#[$coalescing])*);
        }

        impl $store {
            $crate::sql::store::store_accessors!($builder, $pool);

            /// The end of `connect`: the store over the pool it connected, with the default
            /// settings.
            async fn connected(
                pool: Result<$pool, sqlx::Error>,
            ) -> Result<Self, $crate::error::StoreError> {
                let pool = pool.map_err($crate::sql::db_err("connecting", "-"))?;
                Self::builder(pool).build().await
            }

            /// A stream read of the store: shared with concurrent ones when the backend shares
            /// it (`shared_read`), else on a pooled connection.
            async fn pooled_read_stream(
                &self,
                stream_id: &eventfold_core::StreamId,
                from_version: u64,
                max_count: u64,
            ) -> Result<Vec<eventfold_core::RecordedEvent>, $crate::error::StoreError> {
                match self.shared_read(stream_id, from_version, max_count) {
                    Some(read) => read.await,
                    None => {
                        let sql = &self.sql.read;
                        read_stream_pooled(&self.pool, sql, stream_id, from_version, max_count)
                            .await
                    }
                }
            }
        }
    };
}
pub(crate) use store_type;

/// Stamps a SQL store's `migrate` (documented by `$migrate`: its module's `MIGRATIONS` in the
/// dialect `$d`), the [`read helpers`](crate::sql::read::read_helpers) of its connection type
/// `$conn`, its `EventStore` impl (with `$uow` and `$wakeup`) and its [`migration_store!`].
///
/// `append` (documented by `$append`) submits to the store's coalescer, when on, the request
/// `$batch` makes (a closure of the store and the append's arguments); without, it runs `$fast`
/// when `$guard` says the append can (SQLite's lone appends), else `$alone` (a function of the
/// store and the append's arguments).
macro_rules! event_store {
    (
        $store:ident, $d:ty, $conn:ty, $uow:ty, $wakeup:ty;
        $(#[$append:meta])*
        append: $batch:expr,
        alone: $alone:path $(, or $fast:ident if $guard:ident)?;
        $(#[$read_log_doc:meta])*
        read_log: $read_log:ident;
        $(#[$migrate:meta])*
        migrate;
    ) => {
        impl $store {
            $(#[$migrate])*
            pub async fn migrate(&self) -> Result<(), $crate::error::StoreError> {
                $crate::sql::migrations::migrate::<$d>(&self.pool, &self.naming, MIGRATIONS).await
            }
        }

        $crate::sql::read::read_helpers!($conn);

        impl $crate::store::EventStore for $store {
            type UnitOfWork = $uow;
            type Wakeup = $wakeup;

            $(#[$append])*
            async fn append(
                &self,
                stream_id: &eventfold_core::StreamId,
                expected: $crate::error::ExpectedVersion,
                events: Vec<eventfold_core::NewEvent>,
            ) -> Result<$crate::store::AppendResult, $crate::error::StoreError> {
                match &self.coalescer {
                    Some(coalescer) => {
                        let request = ($batch)(self, stream_id, expected, events)?;
                        coalescer.submit(request).await
                    }
                    $(None if self.$guard(stream_id, &events) => {
                        self.$fast(stream_id, expected, events).await
                    })?
                    None => $alone(self, stream_id, expected, events).await,
                }
            }

            $crate::sql::store::store_handovers!($read_log, $(#[$read_log_doc])*);

            $crate::sql::read::store_reads!();
        }

        $crate::sql::store::migration_store!($store, $d);
    };
}
pub(crate) use event_store;
