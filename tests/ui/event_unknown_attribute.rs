use eventfold::Event;

#[derive(Event)]
enum OrderEvent {
    #[event(rename = "order.placed")]
    Placed { customer: String },
}

fn main() {}
