use eventfold::{aggregate, Event};

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
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
    fn handle(&self, _command: &()) -> Result<OrderEvent, Rejected> {
        Ok(OrderEvent::Placed)
    }

    fn apply(&mut self, _event: &OrderEvent) {
        self.placed = true;
    }
}

fn main() {}
