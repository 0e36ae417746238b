//! Cases and writers of the command and append sections: the writer tasks, their tallies,
//! the CPU monitor and the timed, alternated segments.

use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    /// `Repository::execute`, one event per command.
    LibExecute,
    /// `Repository::with_cache(..).execute`, one event per command.
    LibCached,
    /// BEGIN; INSERT one row; COMMIT.
    RawInsert,
    /// INSERT one row (autocommit).
    RawInsertAuto,
    /// BEGIN; SELECT the stream; INSERT the next version; COMMIT.
    RawLoadInsert,
    /// `EventStore::append` of 100 events, `Exact(0)`, fresh stream.
    LibAppend,
    /// BEGIN; INSERT 100 rows with UNNEST; COMMIT.
    RawAppend,
    /// Global log, without the mechanism: autocommit INSERT into `raw_plain`, commit_key 0.
    LogPlain,
    /// Global log, with the mechanism: autocommit INSERT into `raw_keyed`, keyed.
    LogKeyed,
    /// Global log, library: `EventStore::append` of 1 event, `Exact(version)`.
    LogLibAppend,
}

impl Case {
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Case::LibExecute => "lib",
            Case::LibCached => "lbc",
            Case::RawInsert => "rin",
            Case::RawInsertAuto => "ria",
            Case::RawLoadInsert => "rli",
            Case::LibAppend => "lba",
            Case::RawAppend => "rba",
            Case::LogPlain => "lgp",
            Case::LogKeyed => "lgk",
            Case::LogLibAppend => "lgl",
        }
    }

    /// Does this case append to fresh streams (100 events each) rather than cycle over
    /// aggregates?
    pub(crate) fn fresh_streams(self) -> bool {
        matches!(self, Case::LibAppend | Case::RawAppend)
    }
}

pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) store: PgStore,
    pub(crate) repo: Repository<Counter, PgStore>,
    pub(crate) cached: Repository<Counter, PgStore>,
    pub(crate) raw_insert: String,
    pub(crate) plain_insert: String,
    pub(crate) keyed_insert: String,
    pub(crate) raw_batch: String,
}

/// One concurrent writer: its own aggregates (or fresh streams), kept across rounds.
pub(crate) struct Writer {
    pub(crate) case: Case,
    pub(crate) shared: Arc<Shared>,
    /// Aggregate ids (part 1) or the stream id prefix (part 2).
    pub(crate) ids: Vec<String>,
    /// The version of each aggregate, for the cases that do not load.
    pub(crate) versions: Vec<u64>,
    /// Operations done, warm-up included.
    pub(crate) done: u64,
}

impl Writer {
    pub(crate) fn new(case: Case, shared: &Arc<Shared>, writers: usize, index: usize) -> Self {
        let ids = if case.fresh_streams() {
            vec![format!("{}-c{writers}-w{index}", case.tag())]
        } else {
            (0..AGGREGATES_PER_WRITER)
                .map(|a| format!("{}-c{writers}-w{index}-a{a}", case.tag()))
                .collect()
        };
        Self {
            case,
            shared: shared.clone(),
            versions: vec![0; ids.len()],
            ids,
            done: 0,
        }
    }

    pub(crate) fn meta() -> CommandMetadata {
        CommandMetadata::new()
    }

    pub(crate) fn event(&self) -> Result<NewEvent> {
        Ok(NewEvent::encode(
            &CounterEvent::Incremented { n: 1 },
            self.shared.store.source(),
            &Self::meta(),
        )?)
    }

    /// One operation; returns the number of events it wrote.
    pub(crate) async fn step(&mut self) -> Result<u64> {
        let slot = (self.done % self.ids.len() as u64) as usize;
        self.done += 1;
        let shared = &self.shared;
        match self.case {
            Case::LibExecute | Case::LibCached => {
                let repo = if self.case == Case::LibCached {
                    &shared.cached
                } else {
                    &shared.repo
                };
                repo.execute(&self.ids[slot], &Increment, Self::meta())
                    .await?;
                Ok(1)
            }
            Case::RawInsert => {
                let event = self.event()?;
                let version = self.versions[slot] + 1;
                let mut tx = shared.pool.begin().await?;
                insert_one(
                    &mut tx,
                    &shared.raw_insert,
                    &self.ids[slot],
                    version,
                    &event,
                )
                .await?;
                tx.commit().await?;
                self.versions[slot] = version;
                Ok(1)
            }
            Case::RawInsertAuto | Case::LogPlain | Case::LogKeyed => {
                let sql = match self.case {
                    Case::RawInsertAuto => &shared.raw_insert,
                    Case::LogPlain => &shared.plain_insert,
                    _ => &shared.keyed_insert,
                };
                let event = self.event()?;
                let version = self.versions[slot] + 1;
                let mut conn = shared.pool.acquire().await?;
                insert_one(&mut conn, sql, &self.ids[slot], version, &event).await?;
                self.versions[slot] = version;
                Ok(1)
            }
            Case::RawLoadInsert => {
                let mut tx = shared.pool.begin().await?;
                let rows: Vec<RawRow> = sqlx::query_as(RAW_LOAD_SQL)
                    .bind(Counter::TYPE)
                    .bind(&self.ids[slot])
                    .fetch_all(&mut *tx)
                    .await?;
                let version = raw_fold(&self.ids[slot], &rows)?;
                let event = self.event()?;
                let next = u64::try_from(version)? + 1;
                insert_one(&mut tx, &shared.raw_insert, &self.ids[slot], next, &event).await?;
                tx.commit().await?;
                Ok(1)
            }
            Case::LogLibAppend => {
                let stream = StreamId::new(Counter::TYPE, self.ids[slot].as_str())?;
                let event = self.event()?;
                let done = shared
                    .store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(self.versions[slot]),
                        vec![event],
                    )
                    .await?;
                self.versions[slot] = done.version;
                Ok(1)
            }
            Case::LibAppend => {
                let stream =
                    StreamId::new(Counter::TYPE, format!("{}-{}", self.ids[0], self.done))?;
                let events = batch(shared.store.source())?;
                shared
                    .store
                    .append(&stream, ExpectedVersion::Exact(0), events)
                    .await?;
                Ok(BATCH as u64)
            }
            Case::RawAppend => {
                let stream = format!("{}-{}", self.ids[0], self.done);
                let events = batch(shared.store.source())?;
                let mut tx = shared.pool.begin().await?;
                insert_batch(&mut tx, &shared.raw_batch, &stream, &events).await?;
                tx.commit().await?;
                Ok(BATCH as u64)
            }
        }
    }
}
pub(crate) fn batch(source: &str) -> Result<Vec<NewEvent>> {
    let meta = Writer::meta();
    (0..BATCH)
        .map(|_| {
            NewEvent::encode(&CounterEvent::Incremented { n: 1 }, source, &meta)
                .map_err(BoxError::from)
        })
        .collect()
}

pub(crate) async fn insert_one(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    stream_id: &str,
    version: u64,
    e: &NewEvent,
) -> Result<()> {
    crate::raw::bind_event_row!(sqlx::query(sql), stream_id, i64::try_from(version)?, e)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn insert_batch(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    stream_id: &str,
    events: &[NewEvent],
) -> Result<()> {
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    for (i, e) in events.iter().enumerate() {
        ids.push(e.event_id);
        versions.push(i64::try_from(i)? + 1);
        types.push(e.event_type.as_str());
        schema_versions.push(i32::try_from(e.schema_version)?);
        payloads.push(e.payload.as_slice());
        times.push(e.timestamp);
        sources.push(e.source.as_str());
        correlations.push(e.correlation_id);
        causations.push(e.causation_id);
        tenants.push(e.tenant_id.as_deref());
        headers.push(headers_text(e)?);
    }
    sqlx::query(sql)
        .bind(Counter::TYPE)
        .bind(stream_id)
        .bind(ids)
        .bind(versions)
        .bind(types)
        .bind(schema_versions)
        .bind(payloads)
        .bind(times)
        .bind(sources)
        .bind(correlations)
        .bind(causations)
        .bind(tenants)
        .bind(headers)
        .execute(conn)
        .await?;
    Ok(())
}

/// What one measured segment produced.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) ops: u64,
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    /// CPU time of this process's threads in the measured window (ns).
    pub(crate) client_ns: Option<u64>,
    /// CPU time of the PostgreSQL backends of the pool in the measured window (ns).
    pub(crate) server_ns: Option<u64>,
}

impl Tally {
    pub(crate) fn add(&mut self, other: Tally) {
        let first = self.ops == 0 && self.seconds == 0.0;
        let sum = |a: Option<u64>, b: Option<u64>| if first { b } else { Some(a? + b?) };
        self.client_ns = sum(self.client_ns, other.client_ns);
        self.server_ns = sum(self.server_ns, other.server_ns);
        self.ops += other.ops;
        self.events += other.events;
        self.seconds += other.seconds;
    }
    pub(crate) fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    pub(crate) fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }
    /// Client and server CPU microseconds per operation.
    pub(crate) fn cpu_us_per_op(&self) -> (Option<f64>, Option<f64>) {
        let per = |ns: Option<u64>| {
            ns.filter(|_| self.ops > 0)
                .map(|ns| ns as f64 / 1000.0 / self.ops as f64)
        };
        (per(self.client_ns), per(self.server_ns))
    }
}

/// Samples CPU time from `/proc/<pid>/schedstat` (Linux): this process's threads, and the
/// backends of the benchmark database when the server runs on this machine.
pub(crate) struct Monitor {
    pub(crate) conn: sqlx::PgConnection,
}

pub(crate) struct CpuSample {
    pub(crate) client: Option<u64>,
    pub(crate) server: Vec<(i32, u64)>,
}

pub(crate) fn schedstat_ns(dir: &str) -> Option<u64> {
    std::fs::read_to_string(format!("{dir}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(crate) fn client_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        total += schedstat_ns(&entry.ok()?.path().display().to_string())?;
    }
    Some(total)
}

impl Monitor {
    pub(crate) async fn sample(&mut self) -> Result<CpuSample> {
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let server = pids
            .into_iter()
            .filter_map(|(pid,)| {
                let dir = format!("/proc/{pid}");
                // Only a local server's backends: the process must be a postgres one.
                let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
                if comm.trim() != "postgres" {
                    return None;
                }
                schedstat_ns(&dir).map(|ns| (pid, ns))
            })
            .collect();
        Ok(CpuSample {
            client: client_cpu_ns(),
            server,
        })
    }
}

pub(crate) fn cpu_delta(before: &CpuSample, after: &CpuSample) -> (Option<u64>, Option<u64>) {
    let client = before
        .client
        .zip(after.client)
        .map(|(a, b)| b.saturating_sub(a));
    let mut server = None;
    for (pid, ns) in &after.server {
        let start = before
            .server
            .iter()
            .find(|(p, _)| p == pid)
            .map_or(0, |(_, ns)| *ns);
        server = Some(server.unwrap_or(0) + ns.saturating_sub(start));
    }
    (client, server)
}

/// Runs the writers for a warm-up and then `measure`, counting only operations that completed
/// inside the measured window.
pub(crate) async fn segment(
    writers: Vec<Writer>,
    measure: Duration,
    monitor: &mut Monitor,
) -> Result<(Vec<Writer>, Tally)> {
    let start = Instant::now();
    let warm_end = start + WARMUP;
    let end = warm_end + measure;
    let mut handles = Vec::with_capacity(writers.len());
    for mut writer in writers {
        handles.push(tokio::spawn(async move {
            while Instant::now() < warm_end {
                writer.step().await?;
            }
            let (mut ops, mut events) = (0u64, 0u64);
            loop {
                let n = writer.step().await?;
                if Instant::now() > end {
                    break;
                }
                ops += 1;
                events += n;
            }
            Ok::<_, BoxError>((writer, ops, events))
        }));
    }
    tokio::time::sleep_until(warm_end.into()).await;
    let before = monitor.sample().await;
    tokio::time::sleep_until(end.into()).await;
    let after = monitor.sample().await;
    let (client_ns, server_ns) = match (&before, &after) {
        (Ok(a), Ok(b)) => cpu_delta(a, b),
        _ => (None, None),
    };
    let mut back = Vec::with_capacity(handles.len());
    let mut tally = Tally {
        seconds: measure.as_secs_f64(),
        client_ns,
        server_ns,
        ..Tally::default()
    };
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok((writer, ops, events))) => {
                tally.ops += ops;
                tally.events += events;
                back.push(writer);
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(Box::new(e) as BoxError)),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((back, tally)),
    }
}

/// Measures `cases` at `writers` concurrency, alternating A B C / C B A over two rounds.
pub(crate) async fn compare(
    shared: &Arc<Shared>,
    cases: &[Case],
    writers: usize,
    total: Duration,
    monitor: &mut Monitor,
) -> Result<Vec<(Tally, f64)>> {
    let mut pools: Vec<Option<Vec<Writer>>> = cases
        .iter()
        .map(|case| {
            Some(
                (0..writers)
                    .map(|i| Writer::new(*case, shared, writers, i))
                    .collect(),
            )
        })
        .collect();
    let mut tallies = vec![Tally::default(); cases.len()];
    let half = total / 2;
    let forward: Vec<usize> = (0..cases.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    for (round, order) in [forward, backward].into_iter().enumerate() {
        for i in order {
            let ws = pools[i].take().ok_or("writers missing")?;
            let (ws, tally) = segment(ws, half, monitor).await.map_err(|e| {
                format!(
                    "{:?} with {writers} writers (round {}) failed: {e}",
                    cases[i],
                    round + 1
                )
            })?;
            eprintln!(
                "  round {} {:<14} writers={writers}: {:>10.0} ops/s",
                round + 1,
                format!("{:?}", cases[i]),
                tally.ops_per_s()
            );
            tallies[i].add(tally);
            pools[i] = Some(ws);
        }
    }
    Ok(tallies
        .into_iter()
        .zip(pools)
        .map(|(t, ws)| {
            // Average stream length at the end (part 1 only makes sense; part 2 streams are fresh).
            let ws = ws.unwrap_or_default();
            let ops: u64 = ws.iter().map(|w| w.done).sum();
            let streams: usize = ws.iter().map(|w| w.ids.len()).sum();
            (t, ops as f64 / streams.max(1) as f64)
        })
        .collect())
}
