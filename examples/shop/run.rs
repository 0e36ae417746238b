//! `run` (the default command): fresh databases, the services started in the chosen style, the
//! workload, then the checked summary and the trace of one order that did not go through.

use std::io::Write;
use std::time::Duration;

use eventfold::BoxError;
use eventfold::outbox::InProcessBroker;

use crate::inventory::Inventory;
use crate::messages::Topics;
use crate::report::{self, Setup, Summary};
use crate::services::{Database, Open, Services, ShopStore};
use crate::style::orchestrated::{self, Timing};
use crate::style::{Flow, Running, Style, choreographed};
use crate::transport::Transport;
use crate::workload::{self, CATALOG, Driven, Workload};

/// The workload and how it runs.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// How many orders.
    #[arg(long, default_value_t = 400)]
    orders: usize,
    /// Orders undecided at most at a time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The share of orders with a product that is sold out.
    #[arg(long, default_value_t = 0.05)]
    out_of_stock_rate: f64,
    /// The share of orders whose card is declined.
    #[arg(long, default_value_t = 0.05)]
    decline_rate: f64,
    /// The share of orders whose payment answers after the payment timeout.
    #[arg(long, default_value_t = 0.03)]
    payment_timeout_rate: f64,
    /// How long the saga waits for the payment's answer, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    payment_timeout_ms: u64,
    /// orchestrated (a saga) or choreographed (services reacting to events).
    #[arg(long, value_enum, default_value_t = Style::Orchestrated)]
    style: Style,
    /// Kafka bootstrap servers (`host:port`) instead of the in-process broker (build with
    /// `--features kafka`).
    #[arg(long)]
    brokers: Option<String>,
    /// The seed of the workload: the same seed places the same orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl RunArgs {
    fn workload(&self) -> Result<Workload, BoxError> {
        let rates = [
            ("--out-of-stock-rate", self.out_of_stock_rate),
            ("--decline-rate", self.decline_rate),
            ("--payment-timeout-rate", self.payment_timeout_rate),
        ];
        for (flag, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag} {rate}: a rate is between 0 and 1").into());
            }
        }
        if rates.iter().map(|(_, r)| r).sum::<f64>() > 1.0 {
            return Err("the failure rates add up to more than 1".into());
        }
        Ok(Workload {
            orders: self.orders,
            concurrency: self.concurrency,
            out_of_stock_rate: self.out_of_stock_rate,
            decline_rate: self.decline_rate,
            payment_timeout_rate: self.payment_timeout_rate,
            seed: self.seed,
        })
    }
}

/// Runs the shop on `database`; the summary says whether everything added up.
pub async fn run(
    database: &Database,
    args: &RunArgs,
    out: &mut (dyn Write + Send),
) -> Result<Summary, BoxError> {
    match database {
        Database::Sqlite(dir) => {
            on_broker(
                Services::sqlite(dir, Open::Fresh).await?,
                database,
                args,
                out,
            )
            .await
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            on_broker(
                Services::postgres(url, Open::Fresh).await?,
                database,
                args,
                out,
            )
            .await
        }
    }
}

async fn on_broker<S: ShopStore>(
    services: Services<S>,
    database: &Database,
    args: &RunArgs,
    out: &mut (dyn Write + Send),
) -> Result<Summary, BoxError> {
    match &args.brokers {
        None => {
            shop(
                services,
                InProcessBroker::new(),
                Topics::new(""),
                database,
                args,
                out,
            )
            .await
        }
        #[cfg(feature = "kafka")]
        Some(brokers) => {
            // A Kafka broker keeps its topics between runs: this run's are its own.
            let run = uuid::Uuid::now_v7().simple().to_string();
            let topics = Topics::new(format!("shop-{}.", &run[run.len() - 8..]));
            let kafka = crate::transport::Kafka::new(brokers)?;
            shop(services, kafka, topics, database, args, out).await
        }
        #[cfg(not(feature = "kafka"))]
        Some(_) => Err("--brokers: this build has no Kafka support; run it with \
                        `cargo run --example shop --features kafka -- --brokers ...`"
            .into()),
    }
}

async fn shop<S: ShopStore, T: Transport>(
    services: Services<S>,
    transport: T,
    topics: Topics,
    database: &Database,
    args: &RunArgs,
    out: &mut (dyn Write + Send),
) -> Result<Summary, BoxError> {
    let workload = args.workload()?;
    let setup = Setup {
        style: args.style.as_str().to_owned(),
        database: database.describe(),
        broker: transport.describe(),
    };
    writeln!(
        out,
        "the shop: {} orders, {} style\n  databases: {}\n  broker: {}",
        workload.orders, setup.style, setup.database, setup.broker
    )?;

    // The inventory service's opening stock.
    let opening = workload::opening_stock(workload.orders);
    let inventory = Inventory::new(services.inventory.clone());
    for product in &CATALOG {
        inventory.restock(product.sku, opening).await?;
    }

    let timing = Timing::new(Duration::from_millis(args.payment_timeout_ms));
    let driven = match args.style {
        Style::Orchestrated => {
            let (flow, running) =
                orchestrated::start(&services, &transport, &topics, timing).await?;
            drive(&services, flow, running, &workload, out).await?
        }
        Style::Choreographed => {
            let (flow, running) =
                choreographed::start(&services, &transport, &topics, timing).await?;
            drive(&services, flow, running, &workload, out).await?
        }
    };

    let summary = report::summarize(setup, args.style, &services, &driven, opening).await?;
    report::print(&summary, out)?;
    if let Some(failed) = &summary.failed_order {
        writeln!(
            out,
            "\none order that did not go through: {} ({}); what undid it: {}",
            failed.order_id,
            failed.outcome,
            failed.compensations.join(", then ")
        )?;
        let trace = crate::trace::of(&services, failed.correlation_id).await?;
        write!(out, "\n{}", trace.to_text())?;
        write!(
            out,
            "\nthe same as a Mermaid diagram:\n\n{}",
            trace.to_mermaid()
        )?;
        let shop = command_prefix(database);
        writeln!(out, "\nexplore the databases of this run:")?;
        writeln!(out, "  {shop} trace {}", failed.correlation_id)?;
        if let Some(saga_id) = failed.saga_id {
            writeln!(out, "  {shop} sagas show {saga_id}")?;
        }
        writeln!(out, "  {shop} sagas list --state compensated")?;
        writeln!(out, "  {shop} projections rebuild order_summary")?;
        writeln!(out, "  {shop} status")?;
    }
    writeln!(out, "SHOP_JSON {}", serde_json::to_string(&summary)?)?;
    Ok(summary)
}

/// Runs the workload through `flow`, waits until everything it set off is done, and stops the
/// services.
async fn drive<S: ShopStore, F: Flow>(
    services: &Services<S>,
    flow: F,
    running: Running<S>,
    workload: &Workload,
    out: &mut (dyn Write + Send),
) -> Result<Driven, BoxError> {
    let driven = workload::drive(&services.order, &flow, workload, out).await;
    let settled = match &driven {
        Ok(driven) => flow.settle(&driven.orders, Duration::from_secs(30)).await,
        Err(_) => Ok(()),
    };
    let stopped = running.stop().await;
    let (driven, ()) = (driven?, settled?);
    stopped?;
    Ok(driven)
}

/// The command line that reaches this run's databases.
fn command_prefix(database: &Database) -> String {
    let default_dir = std::env::temp_dir().join("eventfold-shop");
    match database {
        Database::Sqlite(dir) if *dir == default_dir => "cargo run --example shop --".to_owned(),
        Database::Sqlite(dir) => {
            format!("cargo run --example shop -- --data-dir {}", dir.display())
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => format!(
            "cargo run --example shop --features postgres -- --database-url {}",
            crate::services::without_password(url)
        ),
    }
}
