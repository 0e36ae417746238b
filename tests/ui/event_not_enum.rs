use eventfold::Event;

#[derive(Event)]
struct OrderPlaced {
    customer: String,
}

fn main() {}
