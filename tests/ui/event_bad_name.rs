use eventfold::Event;

#[derive(Event)]
enum OrderEvent {
    #[event(name = "order placed")]
    Placed { customer: String },
    #[event(name = "")]
    Cancelled,
}

fn main() {}
