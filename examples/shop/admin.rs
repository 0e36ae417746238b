//! eventfold's command line, embedded in the shop: `cargo run --example shop -- <command>`
//! operates on the shop's databases (those of the last run, in the same `--data-dir` or
//! `--database-url`).
//!
//! Each service has its own database, so a command goes to the service it is about: `sagas ...`
//! to the order service (which runs the saga), `projections rebuild order_summary` to the order
//! service and `... stock_levels` to the inventory service, `--service` to choose. Commands about
//! a whole database (`status`, `migrate`, `outbox ...`, `projections status`) run on each service
//! in turn; with `--json` they print one object keyed by service.

use std::io::Write;

use eventfold::BoxError;
use eventfold::cli::{Command, ProjectionsCommand, TraceArgs};
use eventfold::projections::Projections;

use crate::services::{Services, ShopStore};

/// A service of the shop (`--service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Order,
    Payment,
    Inventory,
}

impl Service {
    const ALL: [Service; 3] = [Service::Order, Service::Payment, Service::Inventory];

    fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Inventory => "inventory",
        }
    }
}

/// The shop's projections and the services that own them.
const PROJECTIONS: [(&str, Service); 2] = [
    ("order_summary", Service::Order),
    ("stock_levels", Service::Inventory),
];

/// Runs an eventfold command on the service(s) it is about; its output goes to stdout.
pub async fn run<S: ShopStore>(
    command: &Command,
    services: &Services<S>,
    service: Option<Service>,
    out: &mut (dyn Write + Send),
) -> Result<(), BoxError> {
    if let Command::Trace(args) = command {
        return trace(services, args, out).await;
    }
    let targets = match service {
        Some(service) => vec![service],
        None => about(command)?,
    };
    if let [only] = targets[..] {
        command.execute(&registry(services, only), out).await?;
        return Ok(());
    }
    if command.json() {
        let mut all = serde_json::Map::new();
        for service in targets {
            let mut json = Vec::new();
            command
                .execute(&registry(services, service), &mut json)
                .await?;
            all.insert(service.name().to_owned(), serde_json::from_slice(&json)?);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    for service in targets {
        writeln!(out, "== {} service", service.name())?;
        command.execute(&registry(services, service), out).await?;
        writeln!(out)?;
    }
    Ok(())
}

/// The services a command is about.
fn about(command: &Command) -> Result<Vec<Service>, BoxError> {
    Ok(match command {
        Command::Sagas(_) => vec![Service::Order],
        Command::Projections(args) => match projection_named(&args.command) {
            Some(name) => match PROJECTIONS.iter().find(|(n, _)| *n == name) {
                Some((_, owner)) => vec![*owner],
                None => {
                    return Err(format!(
                        "unknown projection `{name}`: the shop's projections are order_summary \
                         (order service) and stock_levels (inventory service)"
                    )
                    .into());
                }
            },
            None => Service::ALL.to_vec(),
        },
        _ => Service::ALL.to_vec(),
    })
}

/// The projection a `projections` command names, if it names one.
fn projection_named(command: &ProjectionsCommand) -> Option<&str> {
    match command {
        ProjectionsCommand::Rebuild { name, .. }
        | ProjectionsCommand::Pause { name }
        | ProjectionsCommand::Resume { name }
        | ProjectionsCommand::DeadLetters { name, .. }
        | ProjectionsCommand::Reset { name }
        | ProjectionsCommand::DropOld { name } => Some(name),
        _ => None,
    }
}

/// A service's registry of projections, which carries its store: what eventfold's commands run
/// on.
fn registry<S: ShopStore>(services: &Services<S>, service: Service) -> Projections<S> {
    match service {
        Service::Order => services.order.order_projections(),
        Service::Payment => Projections::new(services.payment.clone()),
        Service::Inventory => services.inventory.inventory_projections(),
    }
}

/// `trace <correlation-id> [--mermaid | --dot | --json]`: the flow merged from the three
/// services' databases (eventfold's own `trace` reads one database, and `--merge`s others by
/// URL; the shop knows its databases).
async fn trace<S: ShopStore>(
    services: &Services<S>,
    args: &TraceArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), BoxError> {
    if !args.merge.is_empty() {
        return Err(
            "trace: the shop merges its three databases itself; --merge is for \
                    eventfold's standalone binary"
                .into(),
        );
    }
    let trace = crate::trace::of(services, args.correlation_id).await?;
    if trace.is_empty() {
        return Err(format!(
            "trace {}: no service recorded this flow",
            args.correlation_id
        )
        .into());
    }
    args.write(&trace, out)?;
    Ok(())
}
