use eventfold::{aggregate, Event};

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, thiserror::Error)]
#[error("rejected")]
struct Rejected;

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
