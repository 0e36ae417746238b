use eventfold::{Event, aggregate};

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, thiserror::Error)]
#[error("rejected")]
struct Rejected;

#[derive(Default)]
struct Order;

#[aggregate(name = "Order Items")]
impl Order {
    fn handle(&self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }
    fn apply(&mut self, _event: &OrderEvent) {}
}

fn main() {}
