use eventfold::{aggregate, Event};

include!("shared/order.rs");

#[derive(Debug, Clone, PartialEq, Event)]
enum ShipmentEvent {
    Shipped,
}

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
