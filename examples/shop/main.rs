//! The shop: an order, a payment and an inventory service, each with its own aggregates and its
//! own database, talking only through messages. A customer's order runs through all three:
//! reserve the stock, charge the payment, ship, confirm; or, when something fails, refund,
//! release and reject.
//!
//! ```sh
//! cargo run --example shop                          # 400 orders on SQLite and the in-process broker
//! cargo run --example shop -- --orders 2000 --decline-rate 0.1
//! cargo run --example shop -- sagas list --state compensated     # eventfold's CLI, on the shop's databases
//! cargo run --example shop -- projections rebuild order_summary
//! cargo run --example shop -- trace <correlation-id>
//! cargo run --example shop --features postgres -- --database-url postgres://postgres@127.0.0.1/shop
//! cargo run --example shop --features kafka -- --brokers 127.0.0.1:9092
//! ```
//!
//! Where to read:
//!
//! | file | what |
//! |---|---|
//! | `messages.rs` | what the services say to each other: topics and payloads |
//! | `order.rs`, `payment.rs`, `inventory.rs` | the services: aggregates (derive macros) and operations |
//! | `style/orchestrated.rs` | the place-order saga, and each service's participant |
//! | `style/choreographed.rs` | the same flow as reactions to events (`--style choreographed`) |
//! | `read_models.rs` | `order_summary` and `stock_levels`, projections that can be rebuilt |
//! | `services.rs`, `transport.rs` | a database per service; the broker |
//! | `workload.rs`, `report.rs`, `trace.rs` | the customers, the checked summary, one order's trace |
//! | `admin.rs` | eventfold's CLI embedded in the shop's own command line |

pub mod admin;
pub mod inventory;
pub mod messages;
pub mod order;
pub mod payment;
pub mod read_models;
pub mod report;
pub mod run;
pub mod services;
pub mod style;
pub mod trace;
pub mod transport;
pub mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use eventfold::BoxError;

use crate::report::Summary;
use crate::services::{Database, Open, Services};

/// The shop: order, payment and inventory services on eventfold. Without a command it runs a
/// workload of orders and prints a checked summary; eventfold's commands operate on the
/// databases of the last run.
#[derive(Debug, Parser)]
#[command(name = "shop")]
pub struct Shop {
    /// The directory of the services' SQLite databases (default: eventfold-shop in the
    /// system's temporary directory).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Run on PostgreSQL instead (a schema per service; build with `--features postgres`).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// For eventfold's commands: the service to run on (by default the one the command is
    /// about, or each in turn).
    #[arg(long, global = true, value_enum)]
    service: Option<admin::Service>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run a workload of orders and print a checked summary (what the shop does without a
    /// command).
    Run(run::RunArgs),
    /// eventfold's commands, on the service they are about.
    #[command(flatten)]
    Eventfold(eventfold::cli::Command),
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut stdout = std::io::stdout();
    let result = shop(Shop::parse(), &mut stdout).await;
    let _ = stdout.flush();
    match result {
        // The run's summary did not add up: it says what, and the exit code says so too.
        Ok(Some(summary)) if !summary.ok() => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the shop's command line, writing to `out`: the summary of a run, or `None` for
/// eventfold's commands.
pub async fn shop(shop: Shop, out: &mut (dyn Write + Send)) -> Result<Option<Summary>, BoxError> {
    let database = Database::from_args(shop.data_dir, shop.database_url.as_deref())?;
    match shop.command.unwrap_or(Command::Run(shop.run)) {
        Command::Run(args) => Ok(Some(run::run(&database, &args, out).await?)),
        Command::Eventfold(command) => {
            match &database {
                Database::Sqlite(dir) => {
                    let services = Services::sqlite(dir, Open::Existing).await?;
                    admin::run(&command, &services, shop.service, out).await?
                }
                #[cfg(feature = "postgres")]
                Database::Postgres(url) => {
                    let services = Services::postgres(url, Open::Existing).await?;
                    admin::run(&command, &services, shop.service, out).await?
                }
            }
            Ok(None)
        }
    }
}
