use eventfold::{aggregate, Event};

include!("shared/order.rs");

#[derive(Default)]
struct Order {
    placed: bool,
}

#[aggregate(name = "order", snapshot = 2)]
impl Order {
    fn handle(&self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }

    fn apply(&mut self, _event: &OrderEvent) {
        self.placed = true;
    }
}

fn main() {}
