use eventfold::{aggregate, Event};

include!("shared/order.rs");

#[derive(Default)]
struct Order<T> {
    items: Vec<T>,
}

#[aggregate]
impl<T> Order<T> {
    fn handle(&self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }

    fn apply(&mut self, _event: &OrderEvent) {
        self.items.clear();
    }
}

fn main() {}
