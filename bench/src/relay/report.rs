//! The report of the relay section: the markdown tables, the targets and the `BENCH_JSON` part.

use super::*;

impl RelayResults {
    fn best_rate(&self) -> f64 {
        self.drains
            .iter()
            .map(Drain::relay_rate)
            .fold(0.0, f64::max)
    }

    fn p99(&self) -> f64 {
        percentile(&self.latency.ms, 0.99)
    }

    fn latency_met(&self) -> bool {
        self.latency.acked == self.latency.appended && self.p99() <= LATENCY_TARGET_MS
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.latency.acked != self.latency.appended {
            return Err(format!(
                "relay latency: {} of {} appended events were acknowledged",
                self.latency.acked, self.latency.appended
            )
            .into());
        }
        Ok(())
    }
}

impl crate::report::Section for RelayResults {
    fn print(&self) {
        println!(
            "### Outbox relay: draining a backlog of {} rows to Kafka (one `Relay`, `KafkaPublisher`)\n",
            self.rows
        );
        println!(
            "| batch size | fill (s) | relay (s) | publish, summed (s) | rounds | relay events/s | raw producer events/s | relay / raw | RSS before / max / after (MiB) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|:--|");
        let mib = |k: u64| k as f64 / 1024.0;
        for d in &self.drains {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {} | {:.0} ({}) | {:.0} | {:.2} | {:.1} / {:.1} / {:.1} |",
                d.batch_size,
                d.fill_s,
                d.relay_s,
                d.publish_s,
                d.rounds,
                d.relay_rate(),
                met_or_missed(d.relay_rate() >= DRAIN_TARGET),
                d.raw_rate(),
                d.relay_rate() / d.raw_rate(),
                mib(d.rss_before_kib),
                mib(d.rss_max_kib),
                mib(d.rss_after_kib)
            );
        }
        println!();
        println!(
            "* backlog: `INSERT ... SELECT FROM UNNEST` in chunks of {FILL_CHUNK} rows into `eventfold_outbox`, {KEYS} keys"
        );
        println!(
            "  (round robin), {PAYLOAD_BYTES}-byte payloads, headers `{{}}`, slot = `OutboxMessage::slot_of(key, {SLOTS})`; a fresh"
        );
        println!("  topic with {PARTITIONS} partitions per batch size.");
        println!(
            "* relay: `Relay::run` (default config: 3 batches in flight) until every row was acknowledged, then its"
        );
        println!(
            "  graceful stop; events/s = rows / elapsed; rounds = `publish` calls; publish = time inside
  `KafkaPublisher::publish`, summed over calls that overlap. RSS = `VmRSS` of this process, sampled every 100 ms."
        );
        println!(
            "* raw producer: rdkafka `FutureProducer` with the publisher's settings (idempotence, acks=all, linger 1 ms),"
        );
        println!(
            "  the same keys and payloads, at most {RAW_IN_FLIGHT} messages in flight, to its own {PARTITIONS}-partition topic."
        );
        println!();
        let l = &self.latency;
        println!("### Outbox relay: commit-to-broker-ack latency (ms)\n");
        println!("| path | offered | duration | appended | acked | p50 | p90 | p99 | max |");
        println!("|:--|---:|---:|---:|---:|---:|---:|---:|---:|");
        let raw = &self.raw_latency_ms;
        println!(
            "| raw rdkafka producer (send → ack) | {LATENCY_RATE:.0}/s | {:.0} s | {} | {} | {} |",
            l.seconds,
            raw.len(),
            raw.len(),
            spread(raw, None)
        );
        let raw = &self.loaded_raw_latency_ms;
        println!(
            "| raw rdkafka producer beside the writers (send → ack) | {LATENCY_RATE:.0}/s | {:.0} s | {} | {} | {} |",
            l.seconds,
            raw.len(),
            raw.len(),
            spread(raw, None)
        );
        println!(
            "| `Relay::run` + `KafkaPublisher` (commit → ack) | {LATENCY_RATE:.0}/s | {:.0} s | {} | {} | {} |",
            l.seconds,
            l.appended,
            l.acked,
            spread(&l.ms, Some(met_or_missed(self.latency_met())))
        );
        println!(
            "| of which commit → `publish` call (wake-up, claim) | | | | | {} |",
            spread(&l.to_publish_ms, None)
        );
        println!(
            "| of which `publish` call → batch acknowledged (broker) | | | | | {} |",
            spread(&l.in_publish_ms, None)
        );
        println!();
        println!(
            "* {LATENCY_WRITERS} writer tasks append 1 event per call (`PgStore::with_outbox(OutboxRouting::new().default_topic(..))`,"
        );
        println!(
            "  `ExpectedVersion::Any`, {LATENCY_STREAMS_PER_WRITER} streams each) at {LATENCY_RATE:.0}/s in total; one `Relay::run` (default"
        );
        println!(
            "  `RelayConfig`: batch 500, 3 batches in flight), run before the drains, after a `CHECKPOINT`, on a fresh
  database and broker; latency = `Instant` the publisher's `publish` returned Ok − `Instant` `append` returned.
* every path is measured after {} s of the same load that is not counted (the pool opens its connections and
  prepares its statements, the producer connects).",
            LATENCY_WARMUP.as_secs()
        );
        println!();
    }

    fn print_targets(&self) {
        println!(
            "Relay targets: one relay drains ≥ {DRAIN_TARGET:.0} events/s: {} (best {:.0}/s); p99 commit-to-ack \
             ≤ {LATENCY_TARGET_MS:.0} ms at {LATENCY_RATE:.0} events/s: {} ({:.1} ms).",
            met_or_missed(self.best_rate() >= DRAIN_TARGET),
            self.best_rate(),
            met_or_missed(self.latency_met()),
            self.p99()
        );
    }
}

impl RelayResults {
    pub(crate) fn json(&self) -> serde_json::Value {
        let l = &self.latency;
        let r1 = |v: f64| (v * 10.0).round() / 10.0;
        serde_json::json!({
            "rows": self.rows,
            "keys": KEYS,
            "partitions": PARTITIONS,
            "drain_target_events_per_s": DRAIN_TARGET,
            "drain_target_met": self.best_rate() >= DRAIN_TARGET,
            "drains": self.drains.iter().map(|d| serde_json::json!({
                "batch_size": d.batch_size,
                "fill_s": r1(d.fill_s),
                "relay_s": r1(d.relay_s),
                "publish_s": r1(d.publish_s),
                "rounds": d.rounds,
                "relay_events_per_s": d.relay_rate().round(),
                "raw_producer_events_per_s": d.raw_rate().round(),
                "ratio": crate::r3(d.relay_rate() / d.raw_rate()),
                "rss_kib": {
                    "before": d.rss_before_kib,
                    "max": d.rss_max_kib,
                    "after": d.rss_after_kib,
                },
            })).collect::<Vec<_>>(),
            "latency": {
                "offered_events_per_s": LATENCY_RATE,
                "seconds": l.seconds,
                "appended": l.appended,
                "acked": l.acked,
                "p50_ms": r1(percentile(&l.ms, 0.50)),
                "p90_ms": r1(percentile(&l.ms, 0.90)),
                "p99_ms": r1(self.p99()),
                "max_ms": r1(l.ms.last().copied().unwrap_or(f64::NAN)),
                "target_ms": LATENCY_TARGET_MS,
                "p99_met": self.latency_met(),
                "raw_producer_p50_ms": r1(percentile(&self.raw_latency_ms, 0.50)),
                "raw_producer_p99_ms": r1(percentile(&self.raw_latency_ms, 0.99)),
            },
        })
    }
}
