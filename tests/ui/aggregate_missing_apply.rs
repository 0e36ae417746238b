use eventfold::{aggregate, Event};

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, thiserror::Error)]
#[error("rejected")]
struct Rejected;

#[derive(Default)]
struct Order;

#[aggregate]
impl Order {
    fn handle(&self, _command: &()) -> Result<Vec<OrderEvent>, Rejected> {
        Ok(vec![OrderEvent::Placed])
    }
}

fn main() {}
