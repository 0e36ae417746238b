//! The command line: which sections run (`--only`) and the options.

use crate::*;

/// Declares [`Sections`] from the one list of the sections, in their order: each section's
/// field, which is also its `--only` name, and whether `--only all` runs it.
macro_rules! sections {
    ($($name:ident: $in_all:expr),+ $(,)?) => {
        /// Which sections run (`--only`).
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct Sections {
            $(pub(crate) $name: bool,)+
        }

        impl Sections {
            /// What `--only all` (and no `--only`) runs.
            pub(crate) const ALL: Sections = Sections { $($name: $in_all,)+ };
            /// No section.
            const NONE: Sections = Sections { $($name: false,)+ };

            /// Each section's `--only` name and whether it runs, in order.
            fn switches(&mut self) -> Vec<(&'static str, &mut bool)> {
                vec![$((stringify!($name), &mut self.$name)),+]
            }
        }
    };
}

sections! {
    commands: true,
    appends: true,
    log: true,
    relay: RELAY_IN_ALL,
    projections: true,
    sagas: SAGAS_IN_ALL,
    consumer: true,
    peers: PEERS_IN_ALL,
    sqlite: SQLITE_IN_ALL,
}

impl Sections {
    pub(crate) fn parse(value: &str) -> Result<Self> {
        let mut sections = Sections::NONE;
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                sections = Sections::ALL;
                continue;
            }
            let switches = sections.switches();
            let Some((_, on)) = switches.into_iter().find(|(name, _)| *name == part) else {
                return Err(format!(
                    "--only: unknown section `{part}` (commands, appends, log, relay, projections, sagas, peers, sqlite, consumer, all)"
                )
                .into());
            };
            *on = true;
        }
        if !sections.switches().into_iter().any(|(_, on)| *on) {
            return Err("--only: no section named".into());
        }
        Ok(sections)
    }

    pub(crate) fn names(mut self) -> String {
        self.switches()
            .into_iter()
            .filter(|(_, on)| **on)
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub(crate) struct Options {
    pub(crate) seconds: f64,
    pub(crate) test_before_acquire: bool,
    pub(crate) sections: Sections,
    /// Events written for the catch-up read.
    pub(crate) log_events: u64,
    /// Duration of the commit-to-reader latency test.
    pub(crate) latency_seconds: f64,
    /// Outbox rows of the relay backlog.
    pub(crate) relay_rows: u64,
    /// Duration of the relay's commit-to-ack latency test.
    pub(crate) relay_latency_seconds: f64,
    /// Events of the projection rebuilds.
    pub(crate) projection_events: u64,
    /// Duration of each saga variant's one-at-a-time latency run.
    pub(crate) saga_latency_seconds: f64,
    /// `--saga-fetch-wait-ms`: `fetch.wait.max.ms` of the low-wait Kafka saga variant's consumers.
    pub(crate) saga_fetch_wait_ms: u64,
    /// `--peer-callers`: the caller counts of the `peers` section (empty: 1, 8 and 64).
    pub(crate) peer_callers: Vec<usize>,
    /// `--peer-variants`: the keys of the eventfold variants of the `peers` section (empty: all).
    pub(crate) peer_variants: Vec<String>,
    /// `--saga-variants`: the keys of the saga variants to run (empty: all).
    pub(crate) saga_variants: Vec<String>,
    /// `--quick` was given.
    pub(crate) quick: bool,
}

pub(crate) fn positive(flag: &str, value: Option<String>) -> Result<f64> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && s.is_finite())
        .ok_or_else(|| format!("{flag}: not a positive number: {value}").into())
}

/// A positive count (`_` separators allowed, at most `i64::MAX`) given to `flag`.
pub(crate) fn positive_count(flag: &str, value: Option<String>) -> Result<u64> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && *n <= i64::MAX as u64)
        .ok_or_else(|| format!("{flag}: not a positive count: {value}").into())
}

/// The comma-separated, non-empty items given to `flag`.
fn list(flag: &str, value: Option<String>) -> Result<Vec<String>> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect())
}

pub(crate) fn parse_args() -> Result<Options> {
    let mut quick = false;
    let mut seconds = None;
    let mut log_events = None;
    let mut latency_seconds = None;
    let mut relay_rows = None;
    let mut projection_events = None;
    let mut saga_latency_seconds = None;
    let mut saga_fetch_wait_ms = None;
    let mut peer_callers = Vec::new();
    let mut peer_variants = Vec::new();
    let mut test_before_acquire = true;
    let mut saga_variants = Vec::new();
    let mut sections = Sections::ALL;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = Some(positive("--seconds", args.next())?),
            "--quick" => quick = true,
            "--only" => {
                sections = Sections::parse(&args.next().ok_or("--only needs a value")?)?;
            }
            "--log-events" => log_events = Some(positive_count("--log-events", args.next())?),
            "--relay-rows" => relay_rows = Some(positive_count("--relay-rows", args.next())?),
            "--projection-events" => {
                projection_events = Some(positive_count("--projection-events", args.next())?)
            }
            "--latency-seconds" => {
                latency_seconds = Some(positive("--latency-seconds", args.next())?);
            }
            "--saga-latency-seconds" => {
                saga_latency_seconds = Some(positive("--saga-latency-seconds", args.next())?);
            }
            "--saga-fetch-wait-ms" => {
                saga_fetch_wait_ms = Some(positive_count("--saga-fetch-wait-ms", args.next())?);
            }
            "--peer-callers" => {
                for n in list("--peer-callers", args.next())? {
                    peer_callers.push(positive_count("--peer-callers", Some(n))? as usize);
                }
            }
            "--peer-variants" => peer_variants = list("--peer-variants", args.next())?,
            "--saga-variants" => saga_variants = list("--saga-variants", args.next())?,
            "--no-test-before-acquire" => test_before_acquire = false,
            "-h" | "--help" => {
                println!(
                    "usage: eventfold-bench [--seconds N | --quick] [--only commands,appends,log,relay,projections,sagas,peers,sqlite]\n\
                     \x20                      [--log-events N] [--latency-seconds N] [--relay-rows N] [--projection-events N]\n\
                     \x20                      [--saga-latency-seconds N] [--saga-variants KEY,..] [--saga-fetch-wait-ms N]\n\
                     \x20                      [--peer-callers N,..] [--peer-variants KEY,..]\n\
                     \x20                      [--no-test-before-acquire]\n\
                     --saga-fetch-wait-ms: fetch.wait.max.ms of the low-wait Kafka saga variant's consumers (default 1)\n\
                     --saga-variants: only these saga variants, by the keys of the JSON report (postgres_in_process, ...)\n\
                     --quick: 2 s per case, 200000 log events, 4 s latency tests, 100000 relay rows, 200000 projection events,\n\
                     \x20        2 s saga latency runs, 1 s raw commit baselines\n\
                     sections run by default: commands,appends,log,projections; relay, sagas, peers and sqlite only when named\n\
                     \x20 (they need a Kafka-protocol broker at KAFKA_BOOTSTRAP, default 127.0.0.1:9092)\n\
                     DATABASE_URL defaults to {DEFAULT_DATABASE_URL}"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(Options {
        seconds: seconds.unwrap_or(if quick { 2.0 } else { 5.0 }),
        test_before_acquire,
        sections,
        log_events: log_events.unwrap_or(if quick { 200_000 } else { 1_000_000 }),
        latency_seconds: latency_seconds.unwrap_or(if quick { 4.0 } else { 10.0 }),
        relay_rows: relay_rows.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
        relay_latency_seconds: if quick { 4.0 } else { 10.0 },
        projection_events: projection_events.unwrap_or(if quick { 200_000 } else { 1_000_000 }),
        saga_latency_seconds: saga_latency_seconds.unwrap_or(if quick { 2.0 } else { 3.0 }),
        saga_fetch_wait_ms: saga_fetch_wait_ms.unwrap_or(1),
        peer_callers,
        peer_variants,
        saga_variants,
        quick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_sections_and_refuses_the_unknown() {
        let sections = Sections::parse(" sqlite, log,,commands").unwrap();
        assert_eq!(sections.names(), "commands,log,sqlite");
        assert_eq!(
            Sections::parse("all").unwrap().names(),
            Sections::ALL.names()
        );
        assert_eq!(
            Sections::parse("peers,all").unwrap().names(),
            Sections::ALL.names()
        );
        assert_eq!(Sections::parse("all,peers").unwrap().names(), {
            let mut all = Sections::ALL;
            all.peers = true;
            all.names()
        });
        assert!(Sections::parse("commands,nope").is_err());
        assert!(Sections::parse(" , ").is_err());
    }
}
