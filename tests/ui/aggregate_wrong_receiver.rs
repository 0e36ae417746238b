use eventfold::{aggregate, Event};

include!("shared/order.rs");

#[derive(Default)]
struct Order {
    placed: bool,
}

#[aggregate]
impl Order {
    fn handle(&mut self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }

    fn apply(&self, _event: &OrderEvent) {}
}

fn main() {}
