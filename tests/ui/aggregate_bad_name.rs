use eventfold::{Event, aggregate};

include!("shared/order.rs");

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
