use eventfold::{aggregate, Event};

include!("shared/order.rs");

struct PlaceOrder;

#[derive(Default)]
struct Order {
    placed: bool,
}

#[aggregate]
impl Order {
    fn handle(&self, _command: PlaceOrder) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }

    fn apply(&mut self, _event: &OrderEvent) {
        self.placed = true;
    }
}

fn main() {}
