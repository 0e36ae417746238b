//! What the two SQL stores and their builders share outside the statements: the builder's
//! settings, the store's accessors, the end of `build`, the `EventStore` methods that only hand
//! over to the backend's own, and the [`MigrationStore`](crate::admin::MigrationStore) impl.
//! Stamped into each backend's `store.rs` by the macros below (see [`super::read`] for why
//! macros): the public items they stamp are each backend's own, with the same names and docs as
//! when they were written out per backend.

/// Stamps the builder settings `source`, `migrate`, `outbox` and `coalescing` (inside the
/// builder's `impl`): its fields `source`, `migrate`, `routing` and `coalescing`. `$coalescing`
/// is the doc of `coalescing` (it names the backend's store).
macro_rules! builder_settings {
    ($coalescing:literal) => {
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

        #[doc = $coalescing]
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
    ($read_log:ident, $read_log_doc:literal) => {
        #[doc = $read_log_doc]
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
/// and the fields `pool` and `naming`) in the dialect `$d`.
macro_rules! migration_store {
    ($store:ty, $d:ty) => {
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
