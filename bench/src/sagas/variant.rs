//! One variant of the `sagas` section: what it runs ([`Variant`]: backend, broker, and the
//! switches each one turns, named and keyed for the report) and what it measured ([`Measured`]).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    PgInProcess,
    /// The same with one transaction per record and one lane in every consumer (shared
    /// commits off, `concurrency(1)`): the before-figure, in the same run.
    PgInProcessPerRecord,
    /// The same as `PgInProcess` with the orchestrator's state cache off
    /// (`with_state_cache(0)`: every transition reads the instance's stream), in the same run.
    PgInProcessNoCache,
    /// The same as `PgInProcess` with the relay's claims lingering [`RELAY_LINGER`] after a
    /// wake-up (`RelayConfig::claim_linger`), in the same run.
    PgInProcessLinger,
    /// The same as `PgInProcess` with `ANALYZE` run on the database after the warm-up: the
    /// plans of a service whose tables autovacuum has analyzed (a fresh database's generic
    /// plans are made while its tables are nearly empty, and autovacuum's first pass comes
    /// only after its naptime, one minute by default, longer than a run).
    PgInProcessAnalyzed,
    /// The same as `PgInProcess` with participants that execute a batch's commands one by one
    /// (`Participant::execute_batch`'s default: one append per command), in the same run.
    PgInProcessParticipantsOneByOne,
    PgKafka,
    /// The same, consumers configured with a low `fetch.wait.max.ms` (`--saga-fetch-wait-ms`,
    /// default 1).
    PgKafkaLowWait,
    SqliteInProcess,
}

/// The lanes of `Orchestrator::reply_consumer` (`eventfold::saga::runtime::REPLY_LANES`).
pub(super) const REPLY_LANES: usize = runtime::REPLY_LANES;

/// The lanes of each participant's consumer (`.concurrency(2)`: 1, 2 and 4 measured within
/// noise of each other after the reply consumer went to one lane).
pub(super) const PARTICIPANT_LANES: usize = 2;

/// The relay's claim linger of [`Variant::PgInProcessLinger`].
pub(super) const RELAY_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

impl Variant {
    pub(super) const ALL: [Variant; 9] = [
        Variant::PgInProcess,
        Variant::PgInProcessAnalyzed,
        Variant::PgInProcessParticipantsOneByOne,
        Variant::PgInProcessNoCache,
        Variant::PgInProcessLinger,
        Variant::PgInProcessPerRecord,
        Variant::PgKafka,
        Variant::PgKafkaLowWait,
        Variant::SqliteInProcess,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Variant::PgInProcess => "PostgreSQL + in-process broker",
            Variant::PgInProcessPerRecord => {
                "PostgreSQL + in-process broker, one transaction per record, one lane (before)"
            }
            Variant::PgInProcessNoCache => {
                "PostgreSQL + in-process broker, orchestrator state cache off (`with_state_cache(0)`)"
            }
            Variant::PgInProcessLinger => {
                "PostgreSQL + in-process broker, relay claims linger 1 ms (`RelayConfig::claim_linger`)"
            }
            Variant::PgInProcessAnalyzed => {
                "PostgreSQL + in-process broker, `ANALYZE` after the warm-up (plans from statistics)"
            }
            Variant::PgInProcessParticipantsOneByOne => {
                "PostgreSQL + in-process broker, participants append one command at a time"
            }
            Variant::PgKafka => {
                "PostgreSQL + Kafka-protocol broker (tansu), `KafkaSource::new` defaults"
            }
            Variant::PgKafkaLowWait => {
                "PostgreSQL + Kafka-protocol broker (tansu), consumers with a low `fetch.wait.max.ms` (`--saga-fetch-wait-ms`)"
            }
            Variant::SqliteInProcess => "SQLite (WAL file) + in-process broker",
        }
    }

    pub(super) fn key(self) -> &'static str {
        match self {
            Variant::PgInProcess => "postgres_in_process",
            Variant::PgInProcessPerRecord => "postgres_in_process_per_record",
            Variant::PgInProcessNoCache => "postgres_in_process_no_state_cache",
            Variant::PgInProcessLinger => "postgres_in_process_relay_linger_1ms",
            Variant::PgInProcessAnalyzed => "postgres_in_process_analyzed",
            Variant::PgInProcessParticipantsOneByOne => {
                "postgres_in_process_participants_one_by_one"
            }
            Variant::PgKafka => "postgres_kafka",
            Variant::PgKafkaLowWait => "postgres_kafka_low_fetch_wait",
            Variant::SqliteInProcess => "sqlite_in_process",
        }
    }

    pub(super) fn postgres(self) -> bool {
        self != Variant::SqliteInProcess
    }

    /// Whether the consumers share commits and run lanes: the reply consumer as
    /// `Orchestrator::reply_consumer` builds it (shared commits, [`REPLY_LANES`] lanes), the
    /// participants' consumers with `shared_commits(true)` and [`PARTICIPANT_LANES`] lanes (their
    /// participant writes only through the unit of work).
    pub(super) fn shared_commits(self) -> bool {
        self != Variant::PgInProcessPerRecord
    }

    /// The relay's configuration: the default, with a claim linger in the linger variant.
    pub(super) fn relay_config(self) -> RelayConfig {
        RelayConfig {
            claim_linger: match self {
                Variant::PgInProcessLinger => RELAY_LINGER,
                _ => std::time::Duration::ZERO,
            },
            ..RelayConfig::default()
        }
    }

    /// The capacity of the orchestrator's state cache.
    pub(super) fn state_cache(self) -> usize {
        match self {
            Variant::PgInProcessNoCache => 0,
            _ => runtime::DEFAULT_STATE_CACHE,
        }
    }

    /// Whether the database is analyzed after the warm-up.
    pub(super) fn analyze_after_warmup(self) -> bool {
        self == Variant::PgInProcessAnalyzed
    }

    pub(super) fn p50_target_ms(self) -> f64 {
        match self {
            Variant::PgKafka | Variant::PgKafkaLowWait => TARGET_P50_BROKER_MS,
            _ => TARGET_P50_IN_PROCESS_MS,
        }
    }
}

/// What one variant measured.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// Client-side start → completion of the sequential run (sorted, ms).
    pub(super) sequential_ms: Vec<f64>,
    /// The same sagas, `saga.started` → `saga.completed` event timestamps (sorted, ms).
    pub(super) history_ms: Vec<f64>,
    /// Completions inside the throughput window.
    pub(super) completed: u64,
    pub(super) window_s: f64,
    /// Start → completion of the sagas completed inside the window (sorted, ms).
    pub(super) loaded_ms: Vec<f64>,
    /// Sagas started (and completed) in the whole variant.
    pub(super) sagas: u64,
    pub(super) consumed: u64,
    pub(super) published: u64,
    pub(super) publish_calls: u64,
    /// PostgreSQL `xact_commit` delta of the variant's database over the whole variant.
    pub(super) xact_commits: Option<u64>,
    /// CPU time in the throughput window: this process, and the PostgreSQL backends.
    pub(super) client_ns: Option<u64>,
    pub(super) server_ns: Option<u64>,
    /// Seconds from the first start to the first completion (consumers joining their groups).
    pub(super) first_saga_s: f64,
    /// The consumers over the throughput window.
    pub(super) consumers: Vec<ConsumerLoad>,
    /// The throughput run's warm-up (at least [`LOAD_WARMUP`] and [`IN_FLIGHT`] completions).
    pub(super) load_warmup_s: f64,
    /// The consumers over the one-at-a-time run.
    pub(super) sequential_consumers: Vec<ConsumerLoad>,
    /// `Orchestrator::start` (its unit of work) in the one-at-a-time run (ms, in run order).
    pub(super) start_ms: Vec<f64>,
    /// Kafka variants: [`raw::BROKER_HOPS`] raw hops through the same broker, per round
    /// (sorted, ms; `raw_broker_hops`), measured right after the variant.
    pub(super) broker_hops_ms: Vec<f64>,
}

impl Measured {
    pub(super) fn rate(&self) -> f64 {
        self.completed as f64 / self.window_s
    }
    pub(super) fn per_saga(&self, n: u64) -> f64 {
        n as f64 / self.sagas.max(1) as f64
    }
    /// Units of work per saga that this process counted: one per start and one per consumed
    /// record.
    pub(super) fn units_of_work(&self) -> f64 {
        (self.sagas + self.consumed) as f64 / self.sagas.max(1) as f64
    }
    /// Database transactions per completed saga: measured on PostgreSQL, counted units of work
    /// on SQLite.
    pub(super) fn transactions(&self) -> f64 {
        self.xact_commits
            .map_or_else(|| self.units_of_work(), |x| self.per_saga(x))
    }
    /// The one-at-a-time run's mean latency split (ms): the start's unit of work, the
    /// participants' units of work, the replies' (from the consumers' busy time per record),
    /// and the rest (relay claims and deletions, publishing, the broker, wake-ups).
    pub(super) fn path(&self) -> Option<[f64; 5]> {
        let n = self.sequential_ms.len();
        if n == 0 {
            return None;
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let total = mean(&self.sequential_ms);
        let start = mean(&self.start_ms);
        let per_saga = |c: &ConsumerLoad| c.busy_s * 1000.0 / n as f64;
        let (replies, participants): (Vec<_>, Vec<_>) = self
            .sequential_consumers
            .iter()
            .partition(|c| c.name == REPLY_CONSUMER);
        let replies: f64 = replies.into_iter().map(per_saga).sum();
        let participants: f64 = participants.into_iter().map(per_saga).sum();
        Some([
            total,
            start,
            participants,
            replies,
            total - start - participants - replies,
        ])
    }

    pub(super) fn cpu_us(&self, ns: Option<u64>) -> Option<f64> {
        ns.filter(|_| self.completed > 0)
            .map(|ns| ns as f64 / 1000.0 / self.completed as f64)
    }
}
