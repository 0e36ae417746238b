//! A bank-ledger projection shared by the projection tests, for PostgreSQL and SQLite: per
//! account a balance row, and a ledger row per event (keyed by event id, so a double apply
//! fails loudly instead of passing unnoticed).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eventfold::eventstore::{
    Checkpoint, EventStore, ExpectedVersion, LogFilter, ParkedEvent, ProjectionState,
    ProjectionStore,
};
use eventfold::projections::{Projection, Tables};
use eventfold::{BoxError, CommandMetadata, Envelope, Event, NewEvent, StreamId};

#[derive(Debug, Clone, PartialEq, Event)]
pub enum BankEvent {
    Deposited { account: String, amount: i64 },
}

pub fn deposit(account: &str, amount: i64) -> NewEvent {
    NewEvent::encode(
        &BankEvent::Deposited {
            account: account.to_owned(),
            amount,
        },
        "",
        &CommandMetadata::new(),
    )
    .expect("encode")
}

/// The account name that makes the projection fail.
pub const POISON: &str = "poison";

/// The ledger projection; `version` is its code version. An account named [`POISON`] fails while
/// `poison_fails` is set.
#[derive(Clone)]
pub struct Ledger {
    pub version: u32,
    pub poison_fails: Arc<AtomicBool>,
}

impl Ledger {
    pub fn new(version: u32) -> Self {
        Self {
            version,
            poison_fails: Arc::new(AtomicBool::new(true)),
        }
    }
}

macro_rules! ledger_for {
    ($uow:ty) => {
        impl Projection<$uow> for Ledger {
            type Event = BankEvent;

            fn name(&self) -> &str {
                "ledger"
            }

            fn version(&self) -> u32 {
                self.version
            }

            fn tables(&self) -> Vec<String> {
                vec!["balances".into(), "ledger".into()]
            }

            async fn setup(&self, uow: &mut $uow, tables: &Tables) -> Result<(), BoxError> {
                for sql in [
                    format!(
                        "CREATE TABLE {} (account TEXT PRIMARY KEY, total BIGINT NOT NULL, events BIGINT NOT NULL)",
                        tables.table("balances")
                    ),
                    format!(
                        "CREATE TABLE {} (event_id TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL)",
                        tables.table("ledger")
                    ),
                ] {
                    sqlx::query(&sql).execute(uow.connection()).await?;
                }
                Ok(())
            }

            async fn apply(
                &self,
                uow: &mut $uow,
                tables: &Tables,
                event: &Envelope<BankEvent>,
            ) -> Result<(), BoxError> {
                let BankEvent::Deposited { account, amount } = &event.payload;
                if account == POISON && self.poison_fails.load(Ordering::SeqCst) {
                    return Err(format!("cannot book a deposit to `{account}`").into());
                }
                let balances = tables.table("balances");
                sqlx::query(&format!(
                    "INSERT INTO {} (event_id, account, amount) VALUES ($1, $2, $3)",
                    tables.table("ledger")
                ))
                .bind(event.event_id.to_string())
                .bind(account)
                .bind(amount)
                .execute(uow.connection())
                .await?;
                sqlx::query(&format!(
                    "INSERT INTO {balances} (account, total, events) VALUES ($1, $2, 1) \
                     ON CONFLICT (account) DO UPDATE SET total = {balances}.total + EXCLUDED.total, \
                     events = {balances}.events + 1"
                ))
                .bind(account)
                .bind(amount)
                .execute(uow.connection())
                .await?;
                Ok(())
            }
        }
    };
}

ledger_for!(eventfold::eventstore::postgres::PgUnitOfWork);
ledger_for!(eventfold::eventstore::sqlite::SqliteUnitOfWork);

/// Per account (total, events): a fresh fold of every committed event of the log.
pub async fn fold_log<S: EventStore>(store: &S) -> BTreeMap<String, (i64, i64)> {
    let mut fold = BTreeMap::new();
    let mut from = Checkpoint::START;
    loop {
        let batch = store
            .read_log(from, 5000, &LogFilter::all())
            .await
            .expect("read the log");
        for e in &batch.events {
            let event = eventfold::decode_event::<BankEvent>(e.event.clone(), &Default::default())
                .expect("decode");
            let BankEvent::Deposited { account, amount } = event.payload;
            let entry = fold.entry(account).or_insert((0, 0));
            entry.0 += amount;
            entry.1 += 1;
        }
        from = batch.checkpoint;
        if batch.reached_end && !batch.held_back {
            return fold;
        }
    }
}

/// The `(account, total, events)` rows the balances view must hold: [`fold_log`] without the
/// [`POISON`] account.
pub async fn expected_balances<S: EventStore>(store: &S) -> Vec<(String, i64, i64)> {
    fold_log(store)
        .await
        .into_iter()
        .filter(|(a, _)| a != POISON)
        .map(|(a, (t, n))| (a, t, n))
        .collect()
}

/// The read model's rows (account, total, events), by account, from `pool`'s `balances` view.
pub async fn balances<DB>(pool: &sqlx::Pool<DB>) -> Vec<(String, i64, i64)>
where
    DB: sqlx::Database,
    for<'r> (String, i64, i64): sqlx::FromRow<'r, DB::Row>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    sqlx::query_as("SELECT account, total, events FROM balances ORDER BY account")
        .fetch_all(pool)
        .await
        .expect("query the balances view")
}

/// Asserts that the balances view of `pool` equals a fresh fold of `store`'s log; returns the fold.
pub async fn assert_balances_equal_fold<S: EventStore, DB>(
    store: &S,
    pool: &sqlx::Pool<DB>,
) -> Vec<(String, i64, i64)>
where
    DB: sqlx::Database,
    for<'r> (String, i64, i64): sqlx::FromRow<'r, DB::Row>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let expected = expected_balances(store).await;
    assert_eq!(
        balances(pool).await,
        expected,
        "the read model equals a fresh fold of the log"
    );
    expected
}

/// The stored state of the `ledger` projection (it must exist).
pub async fn ledger_state<S: ProjectionStore>(store: &S) -> ProjectionState {
    store
        .projection_state("ledger")
        .await
        .expect("state")
        .expect("stored")
}

/// The events parked by the `ledger` projection (at most 10).
pub async fn parked_ledger<S: ProjectionStore>(store: &S) -> Vec<ParkedEvent> {
    store
        .parked_projection_events("ledger", 10)
        .await
        .expect("parked")
}

/// Appends `events` to `stream` at any version; returns the highest global position they got.
pub async fn append_any<S: EventStore>(store: &S, stream: &StreamId, events: Vec<NewEvent>) -> u64 {
    let done = store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .expect("append");
    *done.positions.iter().max().unwrap_or(&0)
}

/// The fault tests' runner of the [`Ledger`] alone: batches of 20, polled every 20 ms, and two
/// quick attempts per event, so that a database failure counted as the projection's (it must
/// count none) would park, that is skip, an event after two in a row.
pub fn strict_ledger_runner(
    store: &eventfold::eventstore::postgres::PgStore,
) -> eventfold::projections::RunnerHandle<eventfold::eventstore::postgres::PgStore> {
    use eventfold::projections::{ProjectionOptions, Projections};
    Projections::new(store.clone())
        .register_with(
            Ledger::new(1),
            ProjectionOptions::default()
                .batch_size(20)
                .retries(2, std::time::Duration::from_millis(1)),
        )
        .runner()
        .poll_interval(std::time::Duration::from_millis(20))
        .start()
}

/// After a fault test (`after` says which faults): nothing parked, and the balances equal a
/// fresh fold of the log.
pub async fn assert_ledger_equals_fold(
    store: &eventfold::eventstore::postgres::PgStore,
    after: &str,
) {
    let parked = parked_ledger(store).await;
    assert!(
        parked.is_empty(),
        "events were parked after {after}: {parked:#?}"
    );
    assert_eq!(
        balances(store.pool()).await,
        expected_balances(store).await,
        "the read model equals a fresh fold"
    );
}
