//! `trace <correlation-id>`: the causal tree of one flow, from this service's database and any
//! other service's databases given with `--merge` (`eventfold_core::trace` links and draws it).

use std::io::Write;

use uuid::Uuid;

use super::{CliError, CliStore, OutputArgs, store_err};
use crate::trace::{Trace, TraceRecord};

/// `trace <correlation-id> [--mermaid | --dot | --json] [--merge URL[#PREFIX]]...`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// The flow's correlation id.
    pub correlation_id: Uuid,
    /// Print a Mermaid sequence diagram (paste it into a Markdown page).
    #[arg(long, conflicts_with = "dot")]
    pub mermaid: bool,
    /// Print a Graphviz DOT graph.
    #[arg(long)]
    pub dot: bool,
    /// Also read another service's database (`postgres://...` or `sqlite://...`, with
    /// `#PREFIX` when its tables have another prefix than `eventfold_`, `#SCHEMA.PREFIX` for a
    /// PostgreSQL schema); repeatable. The trees of all databases are merged into one.
    #[arg(long = "merge", value_name = "URL[#[SCHEMA.]PREFIX]")]
    pub merge: Vec<String>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

impl TraceArgs {
    /// Writes `trace` to `out` in the form these arguments ask for: JSON (`--json`), a Mermaid
    /// sequence diagram (`--mermaid`), a Graphviz DOT graph (`--dot`), else the text tree.
    pub fn write(&self, trace: &Trace, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
        if self.output.json {
            writeln!(out, "{}", trace.to_json()?)?;
        } else if self.mermaid {
            write!(out, "{}", trace.to_mermaid())?;
        } else if self.dot {
            write!(out, "{}", trace.to_dot())?;
        } else {
            write!(out, "{}", trace.to_text())?;
        }
        Ok(())
    }
}

pub(super) async fn run<S: CliStore>(
    args: &TraceArgs,
    store: &S,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let flow = args.correlation_id;
    let mut records = store
        .trace(flow)
        .await
        .map_err(store_err(format!("trace {flow}")))?;
    for url in &args.merge {
        records.extend(records_of(url, flow).await?);
    }
    if records.is_empty() {
        return Err(CliError::UnknownFlow {
            correlation_id: flow,
            databases: 1 + args.merge.len(),
        });
    }
    args.write(&Trace::build(flow, records), out)
}

/// `url` without its `#prefix`, and the prefix.
fn split_prefix(url: &str) -> (&str, Option<&str>) {
    match url.rsplit_once('#') {
        Some((url, prefix)) => (url, Some(prefix)),
        None => (url, None),
    }
}

/// The naming of a merged database: `PREFIX`, or `SCHEMA.PREFIX` (PostgreSQL) after the `#`.
fn naming_of(
    suffix: Option<&str>,
) -> Result<crate::eventstore::Naming, crate::eventstore::StoreError> {
    use crate::eventstore::Naming;
    match suffix {
        None => Ok(Naming::default()),
        Some(s) => match s.split_once('.') {
            Some((schema, prefix)) => Naming::new(prefix)?.with_schema(schema),
            None => Naming::new(s),
        },
    }
}

/// `scheme://host/...` without user information, for messages.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The records of `flow` in the database at `url` (read only: no migration runs).
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(unused_macros, unused_variables)
)]
async fn records_of(url: &str, flow: Uuid) -> Result<Vec<TraceRecord>, CliError> {
    let (address, prefix) = split_prefix(url.trim());
    let fail = |reason: String| CliError::Connect {
        url: redact(address),
        reason,
    };
    let naming = naming_of(prefix).map_err(|e| fail(e.to_string()))?;
    // One pooled connection, the store on it without migrations, the trace, then close.
    macro_rules! trace_in {
        ($store:ty, $pool:expr) => {{
            use crate::eventstore::TraceStore;
            let pool = $pool.await.map_err(|e| fail(e.to_string()))?;
            let store = <$store>::builder(pool.clone())
                .naming(naming)
                .migrate(false)
                .build()
                .await
                .map_err(|e| fail(e.to_string()))?;
            let records = store
                .trace(flow)
                .await
                .map_err(store_err(format!("trace {flow} in {}", redact(address))));
            pool.close().await;
            return records;
        }};
    }
    #[cfg(feature = "postgres")]
    if address.starts_with("postgres://") || address.starts_with("postgresql://") {
        trace_in!(
            crate::eventstore::postgres::PgStore,
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(std::time::Duration::from_secs(15))
                .connect(address)
        );
    }
    #[cfg(feature = "sqlite")]
    if address.starts_with("sqlite:") {
        use std::str::FromStr;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(address)
            .map_err(|e| fail(e.to_string()))?
            .read_only(true);
        trace_in!(
            crate::eventstore::sqlite::SqliteStore,
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
        );
    }
    Err(fail(
        "unsupported database URL (expected postgres://... or sqlite://..., with the backend's \
         feature enabled)"
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_follows_the_url() {
        assert_eq!(
            split_prefix("sqlite://a.db#payments_"),
            ("sqlite://a.db", Some("payments_"))
        );
        assert_eq!(split_prefix("postgres://h/db"), ("postgres://h/db", None));
        let naming = naming_of(Some("shop_payment.eventfold_")).expect("schema and prefix");
        assert_eq!(
            (naming.schema(), naming.prefix()),
            (Some("shop_payment"), "eventfold_")
        );
        assert_eq!(naming_of(Some("pay_")).expect("a prefix").prefix(), "pay_");
        assert!(naming_of(Some("bad-schema.x_")).is_err());
        assert_eq!(
            redact("postgres://u:secret@h/db"),
            "postgres://***@h/db".to_owned()
        );
    }
}
