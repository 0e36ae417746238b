use eventfold::{aggregate, Event};

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum ShipmentEvent {
    Shipped,
}

#[derive(Debug, thiserror::Error)]
#[error("rejected")]
struct Rejected;

#[derive(Default)]
struct Order {
    placed: bool,
}

#[aggregate]
impl Order {
    fn handle(&self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }

    fn apply(&mut self, _event: &ShipmentEvent) {
        self.placed = true;
    }
}

fn main() {}
