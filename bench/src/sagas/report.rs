//! The report of the `sagas` section: the markdown tables, the targets and the `BENCH_JSON`
//! part.

use super::*;
use crate::report::met_or_missed;

fn best(rates: &[(usize, f64)]) -> f64 {
    rates.iter().map(|(_, r)| *r).fold(0.0, f64::max)
}

fn r1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn max(sorted: &[f64]) -> f64 {
    sorted.last().copied().unwrap_or(f64::NAN)
}

impl SagaResults {
    fn raw_ceiling(&self, variant: Variant) -> f64 {
        if variant.postgres() {
            best(&self.raw_pg)
        } else {
            best(&self.raw_sqlite)
        }
    }

    /// The commit time of one connection (ms) × the saga's sequential units of work: a floor
    /// under the one-at-a-time latency (no relay, no broker, no statement but the commit's).
    fn floor_ms(&self, variant: Variant) -> Option<f64> {
        let rates = if variant.postgres() {
            &self.raw_pg
        } else {
            &self.raw_sqlite
        };
        rates
            .iter()
            .find(|(tasks, _)| *tasks == 1)
            .map(|(_, rate)| SEQUENTIAL_UNITS * 1000.0 / rate)
    }

    fn ok(&self) -> impl Iterator<Item = (Variant, &Measured)> {
        self.variants
            .iter()
            .filter_map(|(v, m)| m.as_ref().ok().map(|m| (*v, m)))
    }

    fn throughput_met(&self) -> Option<bool> {
        let pg: Vec<f64> = self
            .ok()
            .filter(|(v, _)| v.postgres())
            .map(|(_, m)| m.rate())
            .collect();
        (!pg.is_empty()).then(|| pg.iter().all(|r| *r >= TARGET_SAGAS_PER_S))
    }

    fn p50_met(variant: Variant, m: &Measured) -> bool {
        percentile(&m.sequential_ms, 0.5) <= variant.p50_target_ms()
    }

    pub(crate) fn check(&self) -> Result<()> {
        let failed: Vec<String> = self
            .variants
            .iter()
            .filter_map(|(v, m)| m.as_ref().err().map(|e| format!("{}: {e}", v.name())))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("sagas: {}", failed.join("; ")).into())
        }
    }
}

impl crate::report::Section for SagaResults {
    fn print(&self) {
        let ms3 = |s: &[f64]| {
            format!(
                "{:.1} | {:.1} | {:.1}",
                percentile(s, 0.5),
                percentile(s, 0.99),
                max(s)
            )
        };
        println!(
            "### Sagas: completed 3-step sagas per second, {IN_FLIGHT} in flight ({} s, after a warm-up of at least {} s and {IN_FLIGHT} completions)\n",
            self.seconds,
            LOAD_WARMUP.as_secs()
        );
        println!(
            "| variant | completed | sagas/s | latency under load p50 (ms) | p99 | max | CPU µs/saga: this process | PostgreSQL backends |"
        );
        println!("|:--|---:|---:|---:|---:|---:|---:|---:|");
        let us = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
        for (variant, m) in &self.variants {
            match m {
                Ok(m) => println!(
                    "| {} | {} | {:.0} | {} | {} | {} |",
                    variant.name(),
                    m.completed,
                    m.rate(),
                    ms3(&m.loaded_ms),
                    us(m.cpu_us(m.client_ns)),
                    us(m.cpu_us(m.server_ns)),
                ),
                Err(e) => println!("| {} | failed: {e} | | | | | | |", variant.name()),
            }
        }
        println!();
        let rate = |variant: Variant| {
            self.ok()
                .find(|(v, _)| *v == variant)
                .map(|(_, m)| (m.rate(), m.cpu_us(m.client_ns), m.cpu_us(m.server_ns)))
        };
        // A variant beside another of the same run: sagas/s, their ratio, CPU per saga.
        let beside = |what: &str, with: Variant, without: Variant| {
            if let (Some(on), Some(off)) = (rate(with), rate(without)) {
                println!(
                    "{what} (PostgreSQL + in-process broker, same run): {:.0} / {:.0} sagas/s = **{:.2}x**; CPU µs/saga this process {} / {}, PostgreSQL {} / {}\n",
                    on.0,
                    off.0,
                    on.0 / off.0,
                    us(on.1),
                    us(off.1),
                    us(on.2),
                    us(off.2),
                );
            }
        };
        beside(
            "Orchestrator state cache on / off",
            Variant::PgInProcess,
            Variant::PgInProcessNoCache,
        );
        beside(
            "`ANALYZE` after the warm-up / none",
            Variant::PgInProcessAnalyzed,
            Variant::PgInProcess,
        );
        beside(
            "Participants' batches appended at once / one command at a time",
            Variant::PgInProcess,
            Variant::PgInProcessParticipantsOneByOne,
        );
        beside(
            "Relay claim linger 1 ms / none",
            Variant::PgInProcessLinger,
            Variant::PgInProcess,
        );
        println!(
            "### Sagas: where the time goes under load (lanes of shared transactions, or one transaction per record in the `before` variant)\n"
        );
        println!(
            "| variant | consumer | records/s | busy (handling, share of the window) | ms per record | records per poll |"
        );
        println!("|:--|:--|---:|---:|---:|---:|");
        for (variant, m) in self.ok() {
            for c in &m.consumers {
                println!(
                    "| {} | {} | {:.0} | {:.0}% | {:.2} | {:.1} |",
                    variant.name(),
                    c.name,
                    c.records as f64 / m.window_s,
                    100.0 * c.busy_s / m.window_s,
                    c.ms_per_record(),
                    c.records as f64 / c.polls.max(1) as f64
                );
            }
        }
        println!();
        println!(
            "### Sagas: start-to-completion latency, one saga at a time ({} s per variant, ms)\n",
            self.latency_seconds
        );
        println!(
            "| variant | sagas | start → completion committed p50 | p99 | max | `saga.started` → `saga.completed` (history) p50 | p99 | max | floor: 7 commits of one raw connection (+ p50 of {BROKER_HOPS} raw broker hops) | p50 target |"
        );
        println!("|:--|---:|---:|---:|---:|---:|---:|---:|---:|:--|");
        for (variant, m) in self.ok() {
            let mut floor = self
                .floor_ms(variant)
                .map_or_else(|| "n/a".to_owned(), |f| format!("{f:.1}"));
            if !m.broker_hops_ms.is_empty() {
                floor.push_str(&format!(" + {:.1}", percentile(&m.broker_hops_ms, 0.5)));
            }
            println!(
                "| {} | {} | {} | {} | {floor} | ≤ {:.0} ms: {} |",
                variant.name(),
                m.sequential_ms.len(),
                ms3(&m.sequential_ms),
                ms3(&m.history_ms),
                variant.p50_target_ms(),
                met_or_missed(Self::p50_met(variant, m))
            );
        }
        for (variant, m) in self.ok().filter(|(_, m)| !m.broker_hops_ms.is_empty()) {
            let hops = percentile(&m.broker_hops_ms, 0.5);
            println!(
                "\n* {}: a saga's {BROKER_HOPS} hops in a row through the same broker, raw (four topics of \
{PARTITIONS} partitions, each read by a consumer with the variant's fetch wait, as the four services \
read theirs; a hop is a message produced with the publisher's settings and acknowledged, then \
received; no database, no relay): p50 {hops:.1} ms, p99 {:.1} ms over {} rounds, measured right after the variant. The \
saga's p50 one at a time is {:.2}x that.",
                variant.name(),
                percentile(&m.broker_hops_ms, 0.99),
                m.broker_hops_ms.len(),
                percentile(&m.sequential_ms, 0.5) / hops,
            );
        }
        println!();
        println!(
            "### Sagas: where the time goes one saga at a time (means, ms; units of work from the consumers' busy time)\n"
        );
        println!(
            "| variant | start → completion | `Orchestrator::start` | 3 participant units of work | 3 reply units of work | the rest: relay claims and deletes, publishing, broker, wake-ups |"
        );
        println!("|:--|---:|---:|---:|---:|---:|");
        for (variant, m) in self.ok() {
            if let Some([total, start, participants, replies, rest]) = m.path() {
                println!(
                    "| {} | {total:.1} | {start:.1} | {participants:.1} | {replies:.1} | {rest:.1} |",
                    variant.name()
                );
            }
        }
        println!();
        println!("### Sagas: cost per completed saga, and the distance to the commit ceiling\n");
        println!(
            "| variant | sagas | DB transactions / saga | units of work / saga (counted) | messages published / saga | records consumed / saga | relay `publish` calls / saga | raw commits/s (best) | sagas/s × tx/saga ÷ raw commits/s |"
        );
        println!("|:--|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (variant, m) in self.ok() {
            let tx = m.transactions();
            let measured = match m.xact_commits {
                Some(_) => format!("{tx:.1}"),
                None => format!("≥ {tx:.1} (counted)"),
            };
            let ceiling = self.raw_ceiling(variant);
            println!(
                "| {} | {} | {measured} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} |",
                variant.name(),
                m.sagas,
                m.units_of_work(),
                m.per_saga(m.published),
                m.per_saga(m.consumed),
                m.per_saga(m.publish_calls),
                ceiling,
                m.rate() * tx / ceiling
            );
        }
        println!();
        println!(
            "### Raw commit rate of this machine (autocommit `INSERT` of one row per transaction, {} s each)\n",
            self.raw_seconds
        );
        println!("| database | tasks (one connection each) | commits/s |");
        println!("|:--|---:|---:|");
        for (tasks, rate) in &self.raw_pg {
            println!("| PostgreSQL | {tasks} | {rate:.0} |");
        }
        for (tasks, rate) in &self.raw_sqlite {
            println!("| SQLite (WAL, synchronous = NORMAL) | {tasks} | {rate:.0} |");
        }
        println!();
        let load = |l: Option<f64>| l.map_or_else(|| "n/a".to_owned(), |l| format!("{l:.2}"));
        println!(
            "* The machine's 1-minute load average: {} at the start of the section, {} at its end ({} CPUs).",
            load(self.load.0),
            load(self.load.1),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for (variant, m) in self.ok() {
            println!(
                "* {}: first saga completed after {:.2} s (connections, consumer group joins); warm-up of the
  throughput run {:.1} s; neither counted.",
                variant.name(),
                m.first_saga_s,
                m.load_warmup_s
            );
        }
        let fetch_wait = self.fetch_wait_ms;
        println!(
            "* One process: the orders service (`Orchestrator::start`, its reply consumer, its `Scheduler`,
  one `Relay` with the default `RelayConfig`, in the linger variant with `claim_linger` = 1 ms)
  and three participants (`ParticipantHandler` consumers
  appending one event each to their own stream and replying success), all `run(shutdown)` loops on
  tokio tasks. **One database for all four services** (PostgreSQL: a fresh database per variant,
  pool of {PG_POOL}; SQLite: a temporary file through `SqliteStore::connect`, WAL, synchronous =
  NORMAL, pool of 8), so the one relay publishes commands and replies. Kafka: fresh topics of
  {PARTITIONS} partitions per run (`KafkaPublisher::create_topics`), one `KafkaSource` per consumer
  (its own group), with `KafkaSource::new`'s configuration, then with `fetch.wait.max.ms` = {fetch_wait}:
  tansu 0.6 appears to hold a fetch for its whole `fetch.wait.max.ms` (librdkafka's default:
  500 ms) even when records arrive meanwhile, and a saga has 6 broker hops (observed).
* Busy = from a consumer's poll that returned records to its next poll: handling the batch (the
  replies in {REPLY_LANES} lane(s), each participant's commands in {PARTICIPANT_LANES}, by key, each
  lane one shared transaction; the replies' transitions written with one statement; in the
  `before` variant one transaction per record, one at a time), then the acknowledgements. A
  consumer near 100% busy is the bottleneck: the orders service's reply consumer handles 3
  replies per saga. ms per record = busy time ÷ records (lanes overlap within it).
* Completion = with shared commits, the reply consumer's acknowledgement of the batch (or its
  next poll) after the `ship` step's success reply: every lane's transaction had committed by
  then. One transaction per record: the next record's handler call, or the batch's
  acknowledgement (at most a `BEGIN` and an inbox mark after the commit); no database polling. Latency
  under load: start → completion of the sagas completed inside the window (includes queueing).
  History latency: event timestamps, taken before each transaction commits. Every saga started
  must end `completed` (checked with `count_sagas`), or the run fails.
* DB transactions / saga: PostgreSQL `pg_stat_database.xact_commit` of the variant's database
  from before its pool opened to after it closed (warm-up, both runs, the relay's, scheduler's
  and NOTIFY transactions, migrations), ÷ every saga of the variant. SQLite has no such counter:
  the figure is the counted units of work (1 start + 1 per consumed record), a lower bound that
  leaves out the relay's claims and deletions and the scheduler's claims.
* Raw commits: tasks on connections of their own doing `INSERT INTO saga_raw_commits (uuid, text)`
  autocommit, measured just before the variants; the ratio uses the best task count. The latency
  floor is 7 (the saga's units of work, one after the other) × the commit time of 1 task."
        );
        println!();
    }

    fn print_targets(&self) {
        let pg_rates: Vec<String> = self
            .ok()
            .filter(|(v, _)| v.postgres())
            .map(|(v, m)| format!("{} {:.0}/s", v.key(), m.rate()))
            .collect();
        let p50s: Vec<String> = self
            .ok()
            .map(|(v, m)| {
                format!(
                    "{} {:.1} ms (≤ {:.0}: {})",
                    v.key(),
                    percentile(&m.sequential_ms, 0.5),
                    v.p50_target_ms(),
                    met_or_missed(Self::p50_met(v, m))
                )
            })
            .collect();
        let throughput = match self.throughput_met() {
            Some(met) => met_or_missed(met),
            None => "not measured",
        };
        println!(
            "Saga targets: ≥ {TARGET_SAGAS_PER_S:.0} sagas/s on PostgreSQL: {throughput} ({}); p50 one at a time: {}.",
            pg_rates.join(", "),
            p50s.join(", ")
        );
    }
}

impl SagaResults {
    pub(crate) fn json(&self) -> serde_json::Value {
        let spread = |s: &[f64]| {
            serde_json::json!({
                "n": s.len(),
                "p50_ms": r1(percentile(s, 0.5)),
                "p99_ms": r1(percentile(s, 0.99)),
                "max_ms": r1(max(s)),
            })
        };
        let variants: serde_json::Map<String, serde_json::Value> = self
            .variants
            .iter()
            .map(|(v, m)| {
                let value = match m {
                    Err(e) => serde_json::json!({ "error": e }),
                    Ok(m) => {
                        let ceiling = self.raw_ceiling(*v);
                        serde_json::json!({
                            "sagas_per_s": m.rate().round(),
                            "completed_in_window": m.completed,
                            "under_load": spread(&m.loaded_ms),
                            "one_at_a_time": spread(&m.sequential_ms),
                            "one_at_a_time_history": spread(&m.history_ms),
                            "p50_target_ms": v.p50_target_ms(),
                            "one_at_a_time_floor_ms": self.floor_ms(*v).map(r1),
                            "raw_broker_hops": (!m.broker_hops_ms.is_empty()).then(|| serde_json::json!({
                                "hops": BROKER_HOPS,
                                "rounds": spread(&m.broker_hops_ms),
                            })),
                            "one_at_a_time_mean_path_ms": m.path().map(|[total, start, participants, replies, rest]| serde_json::json!({
                                "total": r1(total),
                                "start": r1(start),
                                "participant_units_of_work": r1(participants),
                                "reply_units_of_work": r1(replies),
                                "rest": r1(rest),
                            })),
                            "p50_met": Self::p50_met(*v, m),
                            "sagas": m.sagas,
                            "db_transactions_per_saga": r1(m.transactions()),
                            "db_transactions_measured": m.xact_commits.is_some(),
                            "units_of_work_per_saga": r1(m.units_of_work()),
                            "messages_published_per_saga": crate::r3(m.per_saga(m.published)),
                            "records_consumed_per_saga": crate::r3(m.per_saga(m.consumed)),
                            "relay_publish_calls_per_saga": crate::r3(m.per_saga(m.publish_calls)),
                            "raw_commits_per_s": ceiling.round(),
                            "ratio_to_commit_ceiling": crate::r3(m.rate() * m.transactions() / ceiling),
                            "client_cpu_us_per_saga": m.cpu_us(m.client_ns).map(f64::round),
                            "server_cpu_us_per_saga": m.cpu_us(m.server_ns).map(f64::round),
                            "first_saga_s": crate::r3(m.first_saga_s),
                            "load_warmup_s": crate::r3(m.load_warmup_s),
                            "consumers_under_load": m.consumers.iter().map(|c| serde_json::json!({
                                "consumer": c.name,
                                "records_per_s": (c.records as f64 / m.window_s).round(),
                                "busy_share": crate::r3(c.busy_s / m.window_s),
                                "ms_per_record": crate::r3(c.ms_per_record()),
                                "records_per_poll": r1(c.records as f64 / c.polls.max(1) as f64),
                            })).collect::<Vec<_>>(),
                        })
                    }
                };
                (v.key().to_owned(), value)
            })
            .collect();
        serde_json::json!({
            "in_flight": IN_FLIGHT,
            "seconds": self.seconds,
            "one_at_a_time_seconds": self.latency_seconds,
            "kafka_low_fetch_wait_ms": self.fetch_wait_ms,
            "pg_pool": PG_POOL,
            "one_database_for_all_services": true,
            "load_average_1m": { "start": self.load.0, "end": self.load.1 },
            "target_sagas_per_s": TARGET_SAGAS_PER_S,
            "target_met_sagas_per_s": self.throughput_met(),
            "raw_commits_per_s": {
                "postgres": self.raw_pg.iter().map(|(t, r)| serde_json::json!({"tasks": t, "commits_per_s": r.round()})).collect::<Vec<_>>(),
                "sqlite": self.raw_sqlite.iter().map(|(t, r)| serde_json::json!({"tasks": t, "commits_per_s": r.round()})).collect::<Vec<_>>(),
            },
            "variants": variants,
        })
    }
}
