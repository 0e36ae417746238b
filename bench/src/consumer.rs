//! The `consumer` section: a [`Consumer`] with its inbox on PostgreSQL, one transaction per
//! message, with shared commits (a polled batch of 100 in one transaction: the inbox marks in
//! one statement, then the handlers), and with shared commits and a batch handler (the batch's
//! events through one `append_many`), beside raw sqlx doing the same writes (an inbox row and an
//! event per message): one transaction per message, one per 100 messages with the marks in one
//! statement, and one per 100 messages with the marks and the events each in one statement. The
//! messages come from the in-process broker, so the figures are the database's side of
//! consuming. The variants alternate in two rounds (A B C ..., then ... C B A) of half the time
//! each, each variant its own consumer group.

use std::time::{Duration, Instant};

use eventfold_core::{BoxError, NewEvent, StreamId};
use eventfold_eventstore::postgres::PgStore;
use eventfold_eventstore::{ExpectedVersion, StreamAppend, UnitOfWork};
use eventfold_outbox::{
    Batch, BatchFailure, Consumer, Handler, InProcessBroker, InProcessConsumer, OutboxMessage,
    Publisher, Record,
};
use sqlx::PgPool;

use crate::{Options, Result};

/// The topic of the backlog.
const TOPIC: &str = "bench-consumer";
/// Distinct keys (streams) of the backlog.
const KEYS: usize = 1000;
/// Messages per poll (the consumer's default batch).
const POLL: usize = 100;
/// Target of the issue: shared commits against one transaction per message.
const SPEEDUP_TARGET: f64 = 10.0;

/// The raw baseline's tables: the library's, copied with their constraints and indexes.
const RAW_TABLES: &str = "CREATE TABLE IF NOT EXISTS raw_consumer_events (LIKE eventfold_events INCLUDING ALL); \
     CREATE TABLE IF NOT EXISTS raw_consumer_inbox (LIKE eventfold_inbox INCLUDING ALL)";
/// The raw inbox mark.
const RAW_MARK: &str = "INSERT INTO raw_consumer_inbox (consumer, message_id, message_type, topic, processed_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
/// The raw inbox marks of a whole poll in one statement (as the shared consumer marks them).
const RAW_MARK_ALL: &str = "INSERT INTO raw_consumer_inbox (consumer, message_id, message_type, topic, processed_at) \
     SELECT $1, m.id, m.type, m.topic, $5 FROM UNNEST($2::uuid[], $3::text[], $4::text[]) AS m(id, type, topic) \
     ON CONFLICT DO NOTHING RETURNING message_id";
/// The raw event: the next version of the key's stream.
const RAW_EVENT: &str = "INSERT INTO raw_consumer_events (event_id, stream_type, stream_id, stream_version, \
       event_type, schema_version, payload, recorded_at, source, correlation_id, headers, commit_key) \
     SELECT gen_random_uuid(), 'acct', $2, COALESCE((SELECT max(stream_version) FROM raw_consumer_events \
       WHERE stream_type = 'acct' AND stream_id = $2), 0) + 1, 'acct.noted', 1, $3, now(), 'bench', $1, \
       '{}'::jsonb, 0";

/// The raw events of a whole poll in one statement: each the next version of its key's stream
/// (the keys of a poll repeat: numbered in poll order within each key).
const RAW_EVENTS_ALL: &str = "INSERT INTO raw_consumer_events (event_id, stream_type, stream_id, stream_version, \
       event_type, schema_version, payload, recorded_at, source, correlation_id, headers, commit_key) \
     SELECT gen_random_uuid(), 'acct', m.sid, COALESCE((SELECT max(stream_version) FROM raw_consumer_events \
       WHERE stream_type = 'acct' AND stream_id = m.sid), 0) + row_number() OVER (PARTITION BY m.sid ORDER BY m.ord), \
       'acct.noted', 1, m.payload, now(), 'bench', m.corr, '{}'::jsonb, 0 \
     FROM UNNEST($1::text[], $2::bytea[], $3::uuid[]) WITH ORDINALITY AS m(sid, payload, corr, ord) ORDER BY m.ord";

/// The handler: one event per message in the key's stream, in the consumer's transaction.
struct Note;

/// [`Note`] with a batch handler: the events of a whole batch through one `append_many`.
struct NoteBatch;

/// The append [`Note`] and [`NoteBatch`] write for one message.
fn noted(record: &Record) -> std::result::Result<StreamAppend, BoxError> {
    let stream = StreamId::new("acct", &record.key)?;
    let mut event = NewEvent::raw("acct.noted", 1, record.payload.clone());
    event.causation_id = Some(record.message_id);
    Ok(StreamAppend::new(stream, ExpectedVersion::Any, vec![event]))
}

impl<U: UnitOfWork> Handler<U> for NoteBatch {
    async fn handle(&self, uow: &mut U, record: &Record) -> std::result::Result<(), BoxError> {
        let a = noted(record)?;
        uow.append(&a.stream_id, a.expected, a.events).await?;
        Ok(())
    }

    async fn handle_batch(
        &self,
        uow: &mut U,
        batch: &Batch<'_>,
    ) -> std::result::Result<(), BatchFailure> {
        let mut appends = Vec::with_capacity(batch.records().len());
        for (index, record) in batch.records().iter().enumerate() {
            appends.push(noted(record).map_err(|e| BatchFailure::at(index, e))?);
        }
        uow.append_many(appends).await?;
        Ok(())
    }
}

impl<U: UnitOfWork> Handler<U> for Note {
    async fn handle(&self, uow: &mut U, record: &Record) -> std::result::Result<(), BoxError> {
        let a = noted(record)?;
        uow.append(&a.stream_id, a.expected, a.events).await?;
        Ok(())
    }
}

/// One variant's totals.
#[derive(Default, Clone, Copy)]
struct Tally {
    messages: u64,
    seconds: f64,
}

impl Tally {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The section's figures.
pub(crate) struct ConsumerResults {
    per_message: Tally,
    shared: Tally,
    batched: Tally,
    raw_per_message: Tally,
    raw_batched: Tally,
    raw_set: Tally,
}

impl ConsumerResults {
    /// The `BENCH_JSON` part of the section.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "per_message_per_s": self.per_message.rate(),
            "shared_per_s": self.shared.rate(),
            "batched_per_s": self.batched.rate(),
            "raw_per_message_per_s": self.raw_per_message.rate(),
            "raw_batched_per_s": self.raw_batched.rate(),
            "raw_set_per_s": self.raw_set.rate(),
        })
    }

    fn print(&self) {
        let ratio = |a: Tally, b: Tally| {
            if b.rate() > 0.0 {
                a.rate() / b.rate()
            } else {
                0.0
            }
        };
        println!("\n## Consumer with inbox (PostgreSQL, in-process broker, 1 event per message)\n");
        println!("| variant | messages/s | ratio |");
        println!("|---|---:|---|");
        println!(
            "| eventfold, one transaction per message | {:.0} | {:.2}x raw per message |",
            self.per_message.rate(),
            ratio(self.per_message, self.raw_per_message)
        );
        println!(
            "| eventfold, shared commits (`shared_commits(true)`, {POLL} per poll) | {:.0} | {:.2}x raw batched; **{:.1}x** one per message (target {SPEEDUP_TARGET}x) |",
            self.shared.rate(),
            ratio(self.shared, self.raw_batched),
            ratio(self.shared, self.per_message)
        );
        println!(
            "| eventfold, shared commits and a batch handler (`handle_batch`: one `append_many`) | {:.0} | {:.2}x raw set-based; **{:.1}x** one per message (target {SPEEDUP_TARGET}x) |",
            self.batched.rate(),
            ratio(self.batched, self.raw_set),
            ratio(self.batched, self.per_message)
        );
        println!(
            "| raw sqlx, one transaction per message | {:.0} | |",
            self.raw_per_message.rate()
        );
        println!(
            "| raw sqlx, one transaction per {POLL} messages | {:.0} | |",
            self.raw_batched.rate()
        );
        println!(
            "| raw sqlx, one transaction per {POLL} messages, the marks and the events each one statement | {:.0} | |",
            self.raw_set.rate()
        );
    }
}

/// The variants, in the order of the first round.
#[derive(Clone, Copy)]
enum Variant {
    PerMessage,
    Shared,
    Batched,
    RawPerMessage,
    RawBatched,
    RawSet,
}

/// Runs the section on `pool` (the bench database).
pub(crate) async fn run(pool: &PgPool, options: &Options) -> Result<ConsumerResults> {
    let store = PgStore::builder(pool.clone()).build().await?;
    sqlx::raw_sql(RAW_TABLES).execute(pool).await?;
    // Enough for the fastest variant to keep busy for the whole run.
    let backlog = ((options.seconds * 30_000.0) as usize).clamp(20_000, 400_000);
    let broker = InProcessBroker::new();
    let payload = br#"{"cents":100}"#.to_vec();
    let messages: Vec<OutboxMessage> = (0..backlog)
        .map(|i| {
            OutboxMessage::new(
                TOPIC,
                format!("k{}", i % KEYS),
                "acct.deposit",
                payload.clone(),
            )
        })
        .collect();
    for chunk in messages.chunks(10_000) {
        broker.publish(chunk).await;
    }
    let consumer = |name: &str, shared: bool| {
        Consumer::new(name, store.clone(), broker.consumer(name, &[TOPIC]), Note)
            .shared_commits(shared)
    };
    let mut per_message = consumer("bench-per-message", false);
    let mut shared = consumer("bench-shared", true);
    let name = "bench-batched";
    let mut batched = Consumer::new(
        name,
        store.clone(),
        broker.consumer(name, &[TOPIC]),
        NoteBatch,
    )
    .shared_commits(true);
    let mut raw_per_message = broker.consumer("raw-per-message", &[TOPIC]);
    let mut raw_batched = broker.consumer("raw-batched", &[TOPIC]);
    let mut raw_set = broker.consumer("raw-set", &[TOPIC]);
    let mut results = ConsumerResults {
        per_message: Tally::default(),
        shared: Tally::default(),
        batched: Tally::default(),
        raw_per_message: Tally::default(),
        raw_batched: Tally::default(),
        raw_set: Tally::default(),
    };
    let half = Duration::from_secs_f64(options.seconds / 2.0);
    let order = [
        Variant::PerMessage,
        Variant::Shared,
        Variant::Batched,
        Variant::RawPerMessage,
        Variant::RawBatched,
        Variant::RawSet,
    ];
    for round in 0..2 {
        let variants: Vec<Variant> = if round == 0 {
            order.to_vec()
        } else {
            order.iter().rev().copied().collect()
        };
        for variant in variants {
            let started = Instant::now();
            let deadline = started + half;
            let mut done = 0u64;
            while Instant::now() < deadline {
                let n = match variant {
                    Variant::PerMessage => handled(per_message.run_once(Duration::ZERO).await?),
                    Variant::Shared => handled(shared.run_once(Duration::ZERO).await?),
                    Variant::Batched => handled(batched.run_once(Duration::ZERO).await?),
                    Variant::RawPerMessage => {
                        raw(
                            pool,
                            &mut raw_per_message,
                            "raw-per-message",
                            Raw::PerMessage,
                        )
                        .await?
                    }
                    Variant::RawBatched => {
                        raw(pool, &mut raw_batched, "raw-batched", Raw::Batched).await?
                    }
                    Variant::RawSet => raw(pool, &mut raw_set, "raw-set", Raw::SetBased).await?,
                };
                if n == 0 {
                    return Err("consumer bench: the backlog ran out; raise it".into());
                }
                done += n as u64;
            }
            let tally = match variant {
                Variant::PerMessage => &mut results.per_message,
                Variant::Shared => &mut results.shared,
                Variant::Batched => &mut results.batched,
                Variant::RawPerMessage => &mut results.raw_per_message,
                Variant::RawBatched => &mut results.raw_batched,
                Variant::RawSet => &mut results.raw_set,
            };
            tally.messages += done;
            tally.seconds += started.elapsed().as_secs_f64();
        }
    }
    results.print();
    Ok(results)
}

fn handled(report: eventfold_outbox::ConsumerReport) -> usize {
    report.handled + report.duplicates + report.parked
}

/// How the raw consumer writes a poll.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// `BEGIN; mark; insert; COMMIT` per message.
    PerMessage,
    /// One transaction: the marks in one statement, then an insert per new message.
    Batched,
    /// One transaction: the marks in one statement, the new messages' events in another.
    SetBased,
}

/// One poll of the raw consumer, written as `how` says; then the offsets.
async fn raw(pool: &PgPool, source: &mut InProcessConsumer, name: &str, how: Raw) -> Result<usize> {
    let records = source.poll(POLL, Duration::ZERO).await;
    if how != Raw::PerMessage {
        let mut tx = pool.begin().await?;
        let marked: std::collections::HashSet<uuid::Uuid> = sqlx::query_scalar(RAW_MARK_ALL)
            .bind(name)
            .bind(records.iter().map(|r| r.message_id).collect::<Vec<_>>())
            .bind(
                records
                    .iter()
                    .map(|r| r.message_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(records.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>())
            .bind(chrono::Utc::now())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let new: Vec<&Record> = records
            .iter()
            .filter(|r| marked.contains(&r.message_id))
            .collect();
        if how == Raw::SetBased {
            sqlx::query(RAW_EVENTS_ALL)
                .bind(new.iter().map(|r| r.key.as_str()).collect::<Vec<_>>())
                .bind(new.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>())
                .bind(new.iter().map(|r| r.message_id).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        } else {
            for record in new {
                raw_event(&mut tx, record).await?;
            }
        }
        tx.commit().await?;
    } else {
        for record in &records {
            let mut tx = pool.begin().await?;
            raw_one(&mut tx, name, record).await?;
            tx.commit().await?;
        }
    }
    if let Some(last) = records.last() {
        source.commit(last);
    }
    Ok(records.len())
}

/// The raw writes of one message: its inbox mark, and its event unless it was marked before.
async fn raw_one(conn: &mut sqlx::PgConnection, name: &str, record: &Record) -> Result<()> {
    let marked = sqlx::query(RAW_MARK)
        .bind(name)
        .bind(record.message_id)
        .bind(&record.message_type)
        .bind(&record.topic)
        .bind(chrono::Utc::now())
        .execute(&mut *conn)
        .await?;
    if marked.rows_affected() == 1 {
        raw_event(conn, record).await?;
    }
    Ok(())
}

/// The raw event of one message.
async fn raw_event(conn: &mut sqlx::PgConnection, record: &Record) -> Result<()> {
    sqlx::query(RAW_EVENT)
        .bind(record.message_id)
        .bind(&record.key)
        .bind(&record.payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
