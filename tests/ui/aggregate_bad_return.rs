use eventfold::{aggregate, Event};

include!("shared/order.rs");

#[derive(Default)]
struct Order {
    placed: bool,
}

#[aggregate]
impl Order {
    fn handle(&self, _command: &()) -> Result<OrderEvent, Rejected> {
        Ok(OrderEvent::Placed)
    }

    fn apply(&mut self, _event: &OrderEvent) {
        self.placed = true;
    }
}

fn main() {}
