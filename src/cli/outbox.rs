//! `outbox ...`: status, dead letters, retry, skip; a consumer's parked messages.

use std::io::Write;

use chrono::Utc;
use serde::Serialize;

use super::table::{Align, write_pairs};
use super::{CliError, CliStore, OutputArgs, one_line, rfc3339, store_err, write_json, write_list};
use crate::eventstore::OutboxStatus;

/// `outbox ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxArgs {
    /// The outbox command.
    #[command(subcommand)]
    pub command: OutboxCommand,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The `outbox` commands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum OutboxCommand {
    /// Rows waiting to be published, the age of the oldest, dead letters.
    Status,
    /// The parked rows (dead letters) with their errors, oldest first.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put a dead letter back into the outbox (its key's later rows wait for it again).
    Retry {
        /// The dead letter's `seq`.
        seq: u64,
    },
    /// Drop a dead letter for good, so its key's later rows flow.
    Skip {
        /// The dead letter's `seq`.
        seq: u64,
    },
    /// The messages a consumer parked (its handler kept failing on them), oldest first.
    Parked {
        /// The consumer's name.
        consumer: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Serialize)]
pub(super) struct OutboxStatusJson {
    pending: u64,
    oldest: Option<String>,
    oldest_age_seconds: Option<f64>,
    dead_letters: u64,
    floor_lag: Option<u64>,
}

impl From<&OutboxStatus> for OutboxStatusJson {
    fn from(s: &OutboxStatus) -> Self {
        Self {
            pending: s.pending,
            oldest: s.oldest.as_ref().map(rfc3339),
            oldest_age_seconds: s.oldest.map(|t| {
                (Utc::now() - t)
                    .to_std()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            }),
            dead_letters: s.dead_letters,
            floor_lag: s.floor_lag,
        }
    }
}

#[derive(Serialize)]
struct DeadLetterJson {
    seq: u64,
    message_id: String,
    topic: String,
    key: String,
    #[serde(rename = "type")]
    message_type: String,
    attempts: u32,
    error: String,
    created_at: String,
    parked_at: String,
}

#[derive(Serialize)]
struct ParkedMessageJson {
    consumer: String,
    message_id: String,
    topic: String,
    partition: u32,
    offset: u64,
    key: String,
    #[serde(rename = "type")]
    message_type: String,
    attempts: u32,
    error: String,
    parked_at: String,
}

#[derive(Serialize)]
struct DeadLetterActionJson {
    seq: u64,
    action: &'static str,
}

pub(super) fn write_outbox_status(
    s: &OutboxStatusJson,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let oldest = match (&s.oldest, s.oldest_age_seconds) {
        (Some(t), Some(age)) => format!("{t} ({age:.1} s ago)"),
        _ => "-".to_owned(),
    };
    let mut pairs = vec![
        ("pending", s.pending.to_string()),
        ("oldest pending", oldest),
        ("dead letters", s.dead_letters.to_string()),
    ];
    if let Some(lag) = s.floor_lag {
        pairs.push(("floor lag (seq)", lag.to_string()));
    }
    write_pairs(out, &pairs)?;
    Ok(())
}

/// Runs an `outbox` command.
pub(super) async fn run<S: CliStore>(
    command: &OutboxCommand,
    store: &S,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        OutboxCommand::Status => status(store, json, out).await,
        OutboxCommand::DeadLetters { limit } => dead_letters(store, *limit, json, out).await,
        OutboxCommand::Parked { consumer, limit } => {
            parked(store, consumer, *limit, json, out).await
        }
        OutboxCommand::Retry { seq } => retry_or_skip(store, *seq, true, json, out).await,
        OutboxCommand::Skip { seq } => retry_or_skip(store, *seq, false, json, out).await,
    }
}

/// `outbox status`.
async fn status<S: CliStore>(
    store: &S,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let status = store
        .outbox_status()
        .await
        .map_err(store_err("outbox status"))?;
    let status = OutboxStatusJson::from(&status);
    if json {
        return write_json(out, &status);
    }
    write_outbox_status(&status, out)
}

/// `outbox dead-letters [--limit N]`.
async fn dead_letters<S: CliStore>(
    store: &S,
    limit: usize,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let letters = store
        .dead_letters(limit)
        .await
        .map_err(store_err("outbox dead-letters"))?;
    let letters: Vec<DeadLetterJson> = letters
        .into_iter()
        .map(|d| DeadLetterJson {
            seq: d.row.seq,
            message_id: d.row.message.id.to_string(),
            topic: d.row.message.topic,
            key: d.row.message.key,
            message_type: d.row.message.message_type,
            attempts: d.row.attempts,
            error: d.error,
            created_at: rfc3339(&d.row.created_at),
            parked_at: rfc3339(&d.parked_at),
        })
        .collect();
    write_list(
        out,
        json,
        &letters,
        "no dead letters",
        &[
            ("SEQ", Align::Right),
            ("TOPIC", Align::Left),
            ("KEY", Align::Left),
            ("TYPE", Align::Left),
            ("ATTEMPTS", Align::Right),
            ("PARKED AT", Align::Left),
            ("ERROR", Align::Left),
        ],
        |d| {
            vec![
                d.seq.to_string(),
                d.topic.clone(),
                d.key.clone(),
                d.message_type.clone(),
                d.attempts.to_string(),
                d.parked_at.clone(),
                one_line(&d.error),
            ]
        },
    )
}

/// `outbox parked <consumer> [--limit N]`.
async fn parked<S: CliStore>(
    store: &S,
    consumer: &str,
    limit: usize,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let parked: Vec<ParkedMessageJson> = store
        .parked_messages(consumer, limit)
        .await
        .map_err(store_err(format!("outbox parked {consumer}")))?
        .into_iter()
        .map(|m| ParkedMessageJson {
            consumer: m.consumer,
            message_id: m.message_id.to_string(),
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key,
            message_type: m.message_type,
            attempts: m.attempts,
            error: m.error,
            parked_at: rfc3339(&m.parked_at),
        })
        .collect();
    write_list(
        out,
        json,
        &parked,
        &format!("consumer `{consumer}` has no parked messages"),
        &[
            ("TOPIC", Align::Left),
            ("PARTITION", Align::Right),
            ("OFFSET", Align::Right),
            ("KEY", Align::Left),
            ("TYPE", Align::Left),
            ("ATTEMPTS", Align::Right),
            ("PARKED AT", Align::Left),
            ("ERROR", Align::Left),
        ],
        |m| {
            vec![
                m.topic.clone(),
                m.partition.to_string(),
                m.offset.to_string(),
                m.key.clone(),
                m.message_type.clone(),
                m.attempts.to_string(),
                m.parked_at.clone(),
                one_line(&m.error),
            ]
        },
    )
}

/// `outbox retry <seq>` (`retry`) or `outbox skip <seq>`.
async fn retry_or_skip<S: CliStore>(
    store: &S,
    seq: u64,
    retry: bool,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let (verb, done) = if retry {
        ("retry", "retried")
    } else {
        ("skip", "skipped")
    };
    let found = if retry {
        store.retry_dead_letter(seq).await
    } else {
        store.skip_dead_letter(seq).await
    }
    .map_err(store_err(format!("outbox {verb} {seq}")))?;
    if !found {
        return Err(CliError::UnknownDeadLetter { action: verb, seq });
    }
    if json {
        return write_json(out, &DeadLetterActionJson { seq, action: done });
    }
    if retry {
        writeln!(
            out,
            "dead letter {seq} is back in the outbox; the relay publishes it next"
        )?;
    } else {
        writeln!(
            out,
            "dead letter {seq} skipped (deleted); its key flows again"
        )?;
    }
    Ok(())
}
