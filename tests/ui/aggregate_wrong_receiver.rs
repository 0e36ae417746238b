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
    fn handle(&mut self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }

    fn apply(&self, _event: &OrderEvent) {}
}

fn main() {}
