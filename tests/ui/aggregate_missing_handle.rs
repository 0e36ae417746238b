use eventfold::{aggregate, Event};

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Default)]
struct Order {
    placed: bool,
}

#[aggregate]
impl Order {
    fn apply(&mut self, _event: &OrderEvent) {
        self.placed = true;
    }
}

fn main() {}
