//! Timed runs shared by the scenarios that compare eventfold with something else in the same
//! process (`peers`, `sqlite`): `callers` tokio tasks call one operation in a loop for a warm-up
//! and then a measured window; every operation that completes inside the window counts, with
//! its latency.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::{BoxError, Result};

/// What one timed run (or the sum of several) measured.
#[derive(Debug, Default, Clone)]
pub(crate) struct Timed {
    /// Operations completed inside the measured windows.
    pub(crate) ops: u64,
    /// Units of work done by those operations (events, messages; equals `ops` by default).
    pub(crate) units: u64,
    /// Length of the measured windows, summed.
    pub(crate) seconds: f64,
    /// Latency of each counted operation, in microseconds (sorted by [`Timed::sorted`]).
    pub(crate) latencies_us: Vec<u32>,
}

impl Timed {
    /// Adds another run of the same thing (another round).
    pub(crate) fn add(&mut self, other: Timed) {
        self.ops += other.ops;
        self.units += other.units;
        self.seconds += other.seconds;
        self.latencies_us.extend(other.latencies_us);
    }

    /// Sorts the latencies; call once before [`Timed::percentile_ms`].
    pub(crate) fn sorted(mut self) -> Self {
        self.latencies_us.sort_unstable();
        self
    }

    pub(crate) fn ops_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub(crate) fn units_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.units as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) of the latencies in milliseconds (nearest rank); the latencies
    /// must be sorted.
    pub(crate) fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// Runs `step(caller, n)` in a loop on `callers` tasks (`n` counts each caller's calls from 0)
/// for `warmup` and then `measure`. A step returns its units of work. The first error stops
/// the run.
pub(crate) async fn run<F, Fut>(
    callers: usize,
    warmup: Duration,
    measure: Duration,
    step: F,
) -> Result<Timed>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + measure;
    let mut handles = Vec::with_capacity(callers);
    for caller in 0..callers {
        let step = step.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < warm_end {
                step(caller, n).await?;
                n += 1;
            }
            let mut timed = Timed::default();
            loop {
                let began = Instant::now();
                let units = step(caller, n).await?;
                n += 1;
                let done = Instant::now();
                if done > end {
                    break;
                }
                timed.ops += 1;
                timed.units += units;
                let us = done.duration_since(began).as_micros();
                timed
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok::<_, BoxError>(timed)
        }));
    }
    let mut total = Timed {
        seconds: measure.as_secs_f64(),
        ..Timed::default()
    };
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(timed)) => {
                total.ops += timed.ops;
                total.units += timed.units;
                total.latencies_us.extend(timed.latencies_us);
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(Box::new(e) as BoxError)),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Runs `work` once and returns its units and how long it took (for drains and reads that are
/// not a loop of callers).
pub(crate) async fn once<Fut>(work: Fut) -> Result<Timed>
where
    Fut: Future<Output = Result<u64>>,
{
    let began = Instant::now();
    let units = work.await?;
    let elapsed = began.elapsed();
    Ok(Timed {
        ops: 1,
        units,
        seconds: elapsed.as_secs_f64(),
        latencies_us: vec![u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)],
    })
}

/// What a paced writer wrote: each event's id and the instant its commit returned.
pub(crate) type Sent = Vec<(uuid::Uuid, Instant)>;

/// Starts `writers` tokio tasks that together call `write(w, k, tick)` `rate` times a second,
/// from `start` until `end`: writer `w`'s `k`-th call, on a ticker of its own (the writers' ticks
/// are spread over the period). Each task returns what its calls returned; an error stops it.
pub(crate) fn paced<F, Fut>(
    writers: usize,
    rate: f64,
    start: Instant,
    end: Instant,
    write: F,
) -> Vec<tokio::task::JoinHandle<Result<Sent>>>
where
    F: Fn(usize, usize, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Sent>> + Send + 'static,
{
    let period = Duration::from_secs_f64(writers as f64 / rate);
    (0..writers)
        .map(|w| {
            let write = write.clone();
            let first = start + period.mul_f64(w as f64 / writers as f64);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(first.into(), period);
                let mut sent = Vec::new();
                let mut k = 0usize;
                loop {
                    let tick = ticker.tick().await.into_std();
                    if tick >= end {
                        break;
                    }
                    sent.extend(write(w, k, tick).await?);
                    k += 1;
                }
                Ok(sent)
            })
        })
        .collect()
}

/// Waits for every writer of [`paced`]: the events they wrote, by id, and the first error among
/// them (a writer that failed or panicked), if any.
pub(crate) async fn join_paced(
    writers: Vec<tokio::task::JoinHandle<Result<Sent>>>,
) -> (HashMap<uuid::Uuid, Instant>, Option<BoxError>) {
    let mut committed = HashMap::new();
    let mut first_error = None;
    for writer in writers {
        match writer.await {
            Ok(Ok(sent)) => committed.extend(sent),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(Box::new(e) as BoxError)),
        }
    }
    (committed, first_error)
}
