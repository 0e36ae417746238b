use eventfold::Event;

#[derive(Event)]
enum OrderEvent {
    Placed { customer: String },
    #[event(name = "order.placed", version = 2)]
    PlacedAgain { customer: String, channel: String },
}

fn main() {}
