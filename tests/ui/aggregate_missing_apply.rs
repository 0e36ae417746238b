use eventfold::{aggregate, Event};

include!("shared/order.rs");

#[derive(Default)]
struct Order;

#[aggregate]
impl Order {
    fn handle(&self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }
}

fn main() {}
