//! One variant measured: sagas started at a steady number in flight for the throughput, then one
//! at a time for the latency, with the consumers' busy shares and the CPU of this process and of
//! PostgreSQL sampled around them.

use super::*;

/// Starts one saga and waits for its completion: (saga id, start instant, completion instant).
pub(super) async fn one_saga<S: SagaStore>(
    orchestrator: &Orchestrator<S, Order>,
    probe: &Probe,
    key: String,
    timeout: Duration,
) -> Result<(Uuid, Instant, Instant, Instant)> {
    let started_at = Instant::now();
    let data = Order {
        id: key.clone(),
        cents: 1250,
    };
    let started = orchestrator.start(&key, data, None).await?;
    let start_committed = Instant::now();
    let done = probe.completion(started.saga_id);
    let completed_at = tokio::time::timeout(timeout, done)
        .await
        .map_err(|_| {
            format!(
                "saga {} ({key}) not completed after {timeout:?}",
                started.saga_id
            )
        })?
        .map_err(|_| "completion probe dropped")?;
    Ok((started.saga_id, started_at, start_committed, completed_at))
}

/// The consumers' work between two samples.
pub(super) fn loads(
    before: &[(&'static str, [u64; 3])],
    after: &[(&'static str, [u64; 3])],
) -> Vec<ConsumerLoad> {
    before
        .iter()
        .zip(after)
        .map(|((name, a), (_, b))| ConsumerLoad {
            name,
            busy_s: b[0].saturating_sub(a[0]) as f64 / 1e9,
            records: b[1].saturating_sub(a[1]),
            polls: b[2].saturating_sub(a[2]),
        })
        .collect()
}

pub(super) fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// CPU time of this process and, on PostgreSQL, of the variant database's backends.
pub(super) async fn cpu_sample(monitor: &mut Option<crate::Monitor>) -> Option<crate::CpuSample> {
    match monitor {
        Some(monitor) => monitor.sample().await.ok(),
        None => Some(crate::CpuSample {
            client: crate::client_cpu_ns(),
            server: Vec::new(),
        }),
    }
}

/// Runs one variant on `store` with `publisher` and consumers from `source`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn measure<S, P, Src>(
    variant: Variant,
    store: S,
    publisher: P,
    source: impl FnMut(&str, &str) -> Result<Src>,
    topics: &Topics,
    options: &Options,
    mut monitor: Option<crate::Monitor>,
) -> Result<Measured>
where
    S: SagaStore + InboxStore + OutboxRelayStore,
    P: Publisher,
    Src: MessageSource + 'static,
{
    let name = variant.name();
    let probe = Arc::new(Probe::default());
    let orchestrator = Orchestrator::new(store.clone(), definition(topics)?)
        .with_reply_topic(&topics.replies)
        .with_state_cache(variant.state_cache());
    let (stop_tx, stop) = watch::channel(false);
    let tasks = spawn_services(
        &store,
        &orchestrator,
        publisher,
        source,
        topics,
        &probe,
        &stop,
        variant,
    )?;
    let run_tag = Uuid::now_v7().simple().to_string();
    let counter = Arc::new(AtomicU64::new(0));
    let next_key = {
        let counter = counter.clone();
        move || format!("{run_tag}-{}", counter.fetch_add(1, Ordering::Relaxed))
    };
    let mut measured = Measured::default();

    let result: Result<()> = async {
        // The first saga: connections open, statements are prepared, consumers join.
        let t = Instant::now();
        one_saga(&orchestrator, &probe, next_key(), FIRST_SAGA_TIMEOUT).await?;
        measured.first_saga_s = t.elapsed().as_secs_f64();
        let warm_end = Instant::now() + WARMUP;
        while Instant::now() < warm_end {
            one_saga(&orchestrator, &probe, next_key(), SAGA_TIMEOUT).await?;
        }
        // Low load: one saga at a time.
        eprintln!(
            "sagas: {name}: one at a time for {} s",
            options.saga_latency_seconds
        );
        let end = Instant::now() + Duration::from_secs_f64(options.saga_latency_seconds);
        let mut sequential = Vec::new();
        let consumers_before = probe.consumer_samples();
        while Instant::now() < end {
            sequential.push(one_saga(&orchestrator, &probe, next_key(), SAGA_TIMEOUT).await?);
        }
        measured.sequential_consumers = loads(&consumers_before, &probe.consumer_samples());
        measured.start_ms = sequential.iter().map(|(_, s, c, _)| ms(*s, *c)).collect();
        // Throughput: IN_FLIGHT starters.
        eprintln!(
            "sagas: {name}: {IN_FLIGHT} in flight for {} s (after a warm-up of at least {} s and {IN_FLIGHT} completions)",
            options.seconds,
            LOAD_WARMUP.as_secs()
        );
        let load_started = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let (stop_starting, starting) = watch::channel(false);
        let mut starters = Vec::with_capacity(IN_FLIGHT);
        for _ in 0..IN_FLIGHT {
            let orchestrator = orchestrator.clone();
            let probe = probe.clone();
            let next_key = next_key.clone();
            let done = done.clone();
            let starting = starting.clone();
            starters.push(tokio::spawn(async move {
                let mut sagas = Vec::new();
                while !*starting.borrow() {
                    let (_, started, _, completed) =
                        one_saga(&orchestrator, &probe, next_key(), SAGA_TIMEOUT).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    sagas.push((started, completed));
                }
                Ok::<_, BoxError>(sagas)
            }));
        }
        // The warm-up lasts until the pipeline turned over once (slow variants take seconds).
        let warm_until = load_started + LOAD_WARMUP;
        let warm_limit = load_started + FIRST_SAGA_TIMEOUT;
        while (Instant::now() < warm_until || done.load(Ordering::Relaxed) < IN_FLIGHT as u64)
            && Instant::now() < warm_limit
            && !starters.iter().any(|s| s.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if variant.analyze_after_warmup()
            && let Some(monitor) = monitor.as_mut()
        {
            sqlx::query("ANALYZE").execute(&mut monitor.conn).await?;
        }
        let window_start = Instant::now();
        let window_end = window_start + Duration::from_secs_f64(options.seconds);
        measured.load_warmup_s = (window_start - load_started).as_secs_f64();
        let before = cpu_sample(&mut monitor).await;
        let consumers_before = probe.consumer_samples();
        tokio::time::sleep_until(window_end.into()).await;
        let after = cpu_sample(&mut monitor).await;
        let consumers_after = probe.consumer_samples();
        let _ = stop_starting.send(true);
        measured.consumers = loads(&consumers_before, &consumers_after);
        if let (Some(a), Some(b)) = (&before, &after) {
            let (client, server) = crate::cpu_delta(a, b);
            measured.client_ns = client;
            measured.server_ns = server.filter(|_| monitor.is_some());
        }
        let mut loaded = Vec::new();
        let mut first_error = None;
        for starter in starters {
            match starter.await {
                Ok(Ok(sagas)) => loaded.extend(
                    sagas
                        .into_iter()
                        .filter(|(_, c)| *c >= window_start && *c <= window_end)
                        .map(|(s, c)| ms(s, c)),
                ),
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => first_error = first_error.or(Some(Box::new(e) as BoxError)),
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        measured.completed = loaded.len() as u64;
        measured.window_s = options.seconds;
        loaded.sort_by(f64::total_cmp);
        measured.loaded_ms = loaded;
        // The last replies' outbox rows are deleted by the relay's settle: wait for it, so the
        // counts and the next variant start from an empty outbox.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.outbox_status().await?.pending > 0 {
            if Instant::now() > deadline {
                return Err("the outbox did not drain within 10 s after the last saga".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The history of the sequential sagas.
        let mut client_ms = Vec::with_capacity(sequential.len());
        let mut history_ms = Vec::with_capacity(sequential.len());
        for (saga_id, started, _, completed) in &sequential {
            client_ms.push(ms(*started, *completed));
            let instance = runtime::load(&store, *saga_id)
                .await?
                .ok_or_else(|| format!("saga {saga_id} has no history"))?;
            if instance.state.status != SagaStatus::Completed {
                return Err(format!(
                    "saga {saga_id} is {:?}, not completed",
                    instance.state.status
                )
                .into());
            }
            let at = |t: &str| {
                instance
                    .history
                    .iter()
                    .find(|h| h.event_type == t)
                    .map(|h| h.at)
            };
            let (Some(s), Some(c)) = (at("saga.started"), at("saga.completed")) else {
                return Err(format!(
                    "saga {saga_id}: no saga.started/saga.completed in its history"
                )
                .into());
            };
            history_ms.push((c - s).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        client_ms.sort_by(f64::total_cmp);
        history_ms.sort_by(f64::total_cmp);
        measured.sequential_ms = client_ms;
        measured.history_ms = history_ms;
        Ok(())
    }
    .await;

    let _ = stop_tx.send(true);
    let mut task_error = None;
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => task_error = task_error.or(Some(e)),
            Ok(Err(e)) => task_error = task_error.or(Some(e.to_string())),
            Err(_) => task_error = task_error.or(Some("a service did not stop within 30 s".into())),
        }
    }
    result?;
    if let Some(e) = task_error {
        return Err(format!("{name}: {e}").into());
    }
    // Every saga this variant started must have completed.
    let started = counter.load(Ordering::Relaxed);
    let counts = store.count_sagas().await?;
    let completed: u64 = counts
        .iter()
        .filter(|(t, s, _)| t == SAGA_TYPE && s == "completed")
        .map(|(_, _, n)| n)
        .sum();
    let all: u64 = counts
        .iter()
        .filter(|(t, _, _)| t == SAGA_TYPE)
        .map(|(_, _, n)| n)
        .sum();
    if completed != started || all != started {
        return Err(format!(
            "{name}: {started} sagas started, {all} registered, {completed} completed ({counts:?})"
        )
        .into());
    }
    measured.sagas = started;
    measured.consumed = probe.consumed.load(Ordering::Relaxed);
    measured.published = probe.published.load(Ordering::Relaxed);
    measured.publish_calls = probe.publish_calls.load(Ordering::Relaxed);
    Ok(measured)
}
