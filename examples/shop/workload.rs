//! The customers: a mix of orders (most go through; some have a sold-out product, some a card
//! that is declined, some a card whose payment answers too late), placed with a bounded number
//! in flight, with progress while they run.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventfold::eventstore::{Checkpoint, EventStore, LogFilter};
use eventfold::{BoxError, Upcasters};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use crate::messages::{Card, OrderLine, PlaceOrder};
use crate::order::OrderEvent;
use crate::style::{Flow, Style};

/// A product of the shop's catalog.
pub struct Product {
    pub sku: &'static str,
    pub price_cents: u64,
}

/// What the shop sells.
pub const CATALOG: [Product; 6] = [
    Product {
        sku: "kettle",
        price_cents: 3_499,
    },
    Product {
        sku: "teapot",
        price_cents: 2_450,
    },
    Product {
        sku: "mug",
        price_cents: 899,
    },
    Product {
        sku: "tea-tin",
        price_cents: 1_299,
    },
    Product {
        sku: "grinder",
        price_cents: 5_900,
    },
    Product {
        sku: "scale",
        price_cents: 3_150,
    },
];

/// A product that sold out before the shop opened: orders that include it are refused.
pub const SOLD_OUT: Product = Product {
    sku: "vintage-poster",
    price_cents: 12_000,
};

/// The opening stock of each product of the catalog: enough for every order (at most 3 lines
/// of at most 3 each), so that only the sold-out product runs short.
pub fn opening_stock(orders: usize) -> u64 {
    9 * orders as u64 + 10
}

/// What the customers do (`--orders`, the rates, `--concurrency`, `--seed`).
#[derive(Debug, Clone)]
pub struct Workload {
    pub orders: usize,
    pub concurrency: usize,
    pub out_of_stock_rate: f64,
    pub decline_rate: f64,
    pub payment_timeout_rate: f64,
    pub seed: u64,
}

impl Workload {
    /// The orders, the same for the same seed.
    pub fn orders(&self) -> Vec<PlaceOrder> {
        let mut random = SplitMix64(self.seed);
        (1..=self.orders)
            .map(|n| {
                let mut skus: Vec<&Product> = CATALOG.iter().collect();
                let mut lines = Vec::new();
                for _ in 0..1 + random.below(3) {
                    let product = skus.remove(random.below(skus.len() as u64) as usize);
                    lines.push(OrderLine {
                        sku: product.sku.to_owned(),
                        quantity: 1 + random.below(3) as u32,
                        price_cents: product.price_cents,
                    });
                }
                let dice = random.unit();
                let mut card = Card::Approves;
                if dice < self.out_of_stock_rate {
                    lines.push(OrderLine {
                        sku: SOLD_OUT.sku.to_owned(),
                        quantity: 1,
                        price_cents: SOLD_OUT.price_cents,
                    });
                } else if dice < self.out_of_stock_rate + self.decline_rate {
                    card = Card::Declines;
                } else if dice
                    < self.out_of_stock_rate + self.decline_rate + self.payment_timeout_rate
                {
                    card = Card::AnswersLate;
                }
                PlaceOrder {
                    order_id: format!("o-{n:05}"),
                    customer: format!("customer-{}", 1 + random.below(40)),
                    lines,
                    card,
                }
            })
            .collect()
    }
}

/// The outcome the workload meant an order to have (the actual one may differ: a payment can
/// time out because the shop is busy). A late payment times out in the orchestrated style only:
/// in the choreographed one nobody waits with a clock, and the order is confirmed late.
pub fn planned_outcome(order: &PlaceOrder, style: Style) -> &'static str {
    if order.lines.iter().any(|l| l.sku == SOLD_OUT.sku) {
        return "out_of_stock";
    }
    match (order.card, style) {
        (Card::Approves, _) | (Card::AnswersLate, Style::Choreographed) => "confirmed",
        (Card::Declines, _) => "payment_declined",
        (Card::AnswersLate, Style::Orchestrated) => "payment_timed_out",
    }
}

/// A small, seedable random number generator (SplitMix64), so that a run can be repeated.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An order that was placed, and what became of it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: PlaceOrder,
    pub correlation_id: Uuid,
    /// When `order.placed` committed (the database's clock).
    pub placed_at: Option<DateTime<Utc>>,
    /// When `order.confirmed` or `order.rejected` committed.
    pub decided_at: Option<DateTime<Utc>>,
    /// `confirmed` or the reject reason.
    pub decision: Option<String>,
}

impl Placed {
    /// From placement to decision.
    pub fn latency(&self) -> Option<Duration> {
        let (placed, decided) = (self.placed_at?, self.decided_at?);
        (decided - placed).to_std().ok()
    }
}

/// What the workload did.
pub struct Driven {
    pub orders: Vec<Placed>,
    /// From the first placement to the last decision.
    pub elapsed: Duration,
}

/// How long the workload waits for the next decision before it gives up.
const STALLED_AFTER: Duration = Duration::from_secs(60);

/// Places the workload's orders through `flow`, at most `concurrency` undecided at a time, and
/// follows the order service's events (`order.placed`, `order.confirmed`, `order.rejected`)
/// until every order is decided.
pub async fn drive<S: EventStore, F: Flow>(
    order_store: &S,
    flow: &F,
    workload: &Workload,
    out: &mut (dyn Write + Send),
) -> Result<Driven, BoxError> {
    let orders = workload.orders();
    let total = orders.len();
    let mut progress = Progress::new(total);
    let filter = LogFilter::all().stream_types(["order"]).event_types([
        "order.placed",
        "order.confirmed",
        "order.rejected",
    ]);
    let mut events = order_store.subscribe(Checkpoint::START, filter);
    let upcasters = Upcasters::default();

    let started = Instant::now();
    let mut placed: Vec<Placed> = Vec::with_capacity(orders.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut to_place = orders.into_iter();
    let (mut undecided, mut decided) = (0usize, 0usize);
    loop {
        while undecided < workload.concurrency.max(1) {
            let Some(order) = to_place.next() else { break };
            let correlation_id = Uuid::now_v7();
            flow.place(&order, correlation_id).await?;
            index.insert(order.order_id.clone(), placed.len());
            placed.push(Placed {
                order,
                correlation_id,
                placed_at: None,
                decided_at: None,
                decision: None,
            });
            undecided += 1;
        }
        if decided == total {
            break;
        }
        let next = tokio::time::timeout(STALLED_AFTER, events.next())
            .await
            .map_err(|_| {
                format!(
                    "no order was decided for {} s ({undecided} undecided): the services are stuck",
                    STALLED_AFTER.as_secs()
                )
            })??;
        let event = eventfold::decode_event::<OrderEvent>(next.event, &upcasters)?;
        let Some(&i) = index.get(event.stream_id.id()) else {
            continue;
        };
        let order = &mut placed[i];
        let decision = match &event.payload {
            OrderEvent::Placed { .. } => {
                order.placed_at = Some(event.timestamp);
                continue;
            }
            OrderEvent::Confirmed => "confirmed",
            OrderEvent::Rejected { reason, .. } => reason.as_str(),
            OrderEvent::StockReserved | OrderEvent::Paid => continue,
        };
        if order.decision.is_none() {
            order.decided_at = Some(event.timestamp);
            order.decision = Some(decision.to_owned());
            undecided -= 1;
            decided += 1;
            progress.decided(decision == "confirmed", out)?;
        }
    }
    progress.finish();
    Ok(Driven {
        orders: placed,
        elapsed: started.elapsed(),
    })
}

/// Progress while the orders run: a bar on a terminal, a line every second otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    started: Instant,
    last_line: Instant,
    confirmed: usize,
    rejected: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} orders decided, {msg} ({per_sec})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
            confirmed: 0,
            rejected: 0,
        }
    }

    fn decided(&mut self, confirmed: bool, out: &mut dyn Write) -> std::io::Result<()> {
        if confirmed {
            self.confirmed += 1;
        } else {
            self.rejected += 1;
        }
        let done = self.confirmed + self.rejected;
        let message = format!("{} confirmed, {} rejected", self.confirmed, self.rejected);
        match &self.bar {
            Some(bar) => {
                bar.set_message(message);
                bar.inc(1);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(1) || done == self.total => {
                self.last_line = Instant::now();
                let rate = done as f64 / self.started.elapsed().as_secs_f64();
                writeln!(
                    out,
                    "  {done}/{} orders decided: {message} ({rate:.0} orders/s)",
                    self.total
                )?;
            }
            None => {}
        }
        Ok(())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
