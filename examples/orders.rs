//! The order flow of eventfold, end to end, on SQLite (the embedded default).
//!
//! Run it with `cargo run --example orders`. It defines typed events and an aggregate with the
//! derive macros, executes commands through a repository (optimistic concurrency, retries,
//! idempotent command ids, snapshots), writes the application's own read table in the same
//! transaction as the events, prints the stored events with their metadata, reads them back
//! through the global log, and shows the outbox rows written with them for the relay.

use eventfold::eventstore::sqlite::SqliteStore;
use eventfold::eventstore::{
    Checkpoint, EventStore, ExecuteError, LogFilter, OutboxRouting, OutboxStore, Repository,
    UnitOfWork,
};
use eventfold::{CommandMetadata, Event, StreamId, aggregate};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happened to an order. Type names are stable: `order.placed`, `order.item_added`, ...
#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed {
        customer: String,
    },
    ItemAdded {
        sku: String,
        quantity: u32,
        price_cents: u64,
    },
    #[event(version = 2)]
    Shipped {
        carrier: String,
        #[serde(default)]
        tracking: Option<String>,
    },
    Cancelled,
}

/// What callers ask an order to do. Everything a decision needs from outside is in the command.
#[derive(Debug, Clone)]
enum OrderCommand {
    Place {
        customer: String,
    },
    AddItem {
        sku: String,
        quantity: u32,
        price_cents: u64,
    },
    Ship {
        carrier: String,
    },
    Cancel,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum OrderError {
    #[error("the order was already placed")]
    AlreadyPlaced,
    #[error("the order does not exist")]
    NotPlaced,
    #[error("the order is {0} and cannot change")]
    Closed(&'static str),
    #[error("an order needs at least one item to ship")]
    Empty,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
enum Status {
    #[default]
    New,
    Open,
    Shipped,
    Cancelled,
}

/// The order's state: only what decisions need.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    status: Status,
    items: u32,
    total_cents: u64,
}

#[aggregate]
impl Order {
    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match (self.status, command) {
            (Status::New, OrderCommand::Place { customer }) => Ok(vec![OrderEvent::Placed {
                customer: customer.clone(),
            }]),
            (_, OrderCommand::Place { .. }) => Err(OrderError::AlreadyPlaced),
            (Status::New, _) => Err(OrderError::NotPlaced),
            (Status::Shipped, _) => Err(OrderError::Closed("shipped")),
            (Status::Cancelled, _) => Err(OrderError::Closed("cancelled")),
            (
                Status::Open,
                OrderCommand::AddItem {
                    sku,
                    quantity,
                    price_cents,
                },
            ) => Ok(vec![OrderEvent::ItemAdded {
                sku: sku.clone(),
                quantity: *quantity,
                price_cents: *price_cents,
            }]),
            (Status::Open, OrderCommand::Ship { .. }) if self.items == 0 => Err(OrderError::Empty),
            (Status::Open, OrderCommand::Ship { carrier }) => Ok(vec![OrderEvent::Shipped {
                carrier: carrier.clone(),
                tracking: None,
            }]),
            (Status::Open, OrderCommand::Cancel) => Ok(vec![OrderEvent::Cancelled]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { .. } => self.status = Status::Open,
            OrderEvent::ItemAdded {
                quantity,
                price_cents,
                ..
            } => {
                self.items += quantity;
                self.total_cents += u64::from(*quantity) * price_cents;
            }
            OrderEvent::Shipped { .. } => self.status = Status::Shipped,
            OrderEvent::Cancelled => self.status = Status::Cancelled,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::connect("sqlite::memory:")
        .await?
        .with_source("order-service")
        .with_outbox(OutboxRouting::new().topic_prefix("shop."));
    let orders = Repository::<Order, _>::new(store.clone()).with_snapshots(50);
    println!(
        "event types: {:?}",
        OrderEvent::event_types()
            .iter()
            .map(|t| (t.name, t.version))
            .collect::<Vec<_>>()
    );

    // A request: every event it causes shares its correlation id.
    let request = Uuid::now_v7();
    let meta = || {
        CommandMetadata::new().correlation_id(request).header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
    };

    orders
        .execute(
            "o-1",
            &OrderCommand::Place {
                customer: "ada".into(),
            },
            meta(),
        )
        .await?;

    // An idempotent command: a client retrying with the same id appends once.
    let add = OrderCommand::AddItem {
        sku: "book".into(),
        quantity: 2,
        price_cents: 1_500,
    };
    let command_id = Uuid::now_v7();
    let first = orders
        .execute("o-1", &add, meta().command_id(command_id))
        .await?;
    let retry = orders
        .execute("o-1", &add, meta().command_id(command_id))
        .await?;
    println!(
        "add item: version {} (retry deduplicated: {}, version {})",
        first.version, retry.deduplicated, retry.version
    );

    // The application's own SQL in the same transaction as the events.
    sqlx::query("CREATE TABLE order_summary (id TEXT PRIMARY KEY, total_cents INTEGER NOT NULL, status TEXT NOT NULL)")
        .execute(store.pool())
        .await?;
    let mut uow = store.begin().await?;
    let shipped = orders
        .execute_in(
            &mut uow,
            "o-1",
            &OrderCommand::Ship {
                carrier: "dhl".into(),
            },
            meta(),
        )
        .await?;
    sqlx::query("INSERT INTO order_summary (id, total_cents, status) VALUES (?1, ?2, ?3)")
        .bind("o-1")
        .bind(shipped.state.total_cents as i64)
        .bind(format!("{:?}", shipped.state.status))
        .execute(uow.connection())
        .await?;
    uow.commit().await?;

    // A rejected command is a typed domain error, and nothing is written.
    match orders.execute("o-1", &OrderCommand::Cancel, meta()).await {
        Err(ExecuteError::Rejected { source, stream_id }) => {
            println!("rejected on {stream_id}: {source}")
        }
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }

    let stream = StreamId::new("order", "o-1")?;
    println!("\nstream {stream}:");
    for event in store.read_stream(&stream, 1, u64::MAX).await? {
        println!(
            "  #{} pos {} {} v{} id {} corr {} cause {:?} src {} payload {}",
            event.stream_version,
            event.global_position,
            event.event_type,
            event.schema_version,
            event.event_id,
            event.correlation_id,
            event.causation_id,
            event.source,
            String::from_utf8_lossy(&event.payload)
        );
    }
    let (total, status): (i64, String) =
        sqlx::query_as("SELECT total_cents, status FROM order_summary WHERE id = 'o-1'")
            .fetch_one(store.pool())
            .await?;
    let loaded = orders.load("o-1").await?;
    println!(
        "\nsummary table: total {total} cents, {status}; aggregate: {:?} at version {}",
        loaded.state, loaded.version
    );
    assert_eq!(total as u64, loaded.state.total_cents);

    // Every committed event, in order, from the global log (what projections read).
    let mut subscription =
        store.subscribe(Checkpoint::START, LogFilter::all().stream_types(["order"]));
    print!("\nglobal log:");
    for _ in 0..loaded.version {
        let next = subscription.next().await?;
        print!(" {}#{}", next.event.event_type, next.event.stream_version);
    }
    println!("  (resume from checkpoint {})", subscription.checkpoint());

    // The outbox rows committed with the events, waiting for the relay (or Debezium).
    let status = store.outbox_status().await?;
    println!("\noutbox: {} waiting", status.pending);
    for row in store.read_outbox(10).await? {
        let m = row.message;
        println!(
            "  seq {} topic {} key {} type {} ce_id {}",
            row.seq, m.topic, m.key, m.message_type, m.headers["ce_id"]
        );
    }
    Ok(())
}
