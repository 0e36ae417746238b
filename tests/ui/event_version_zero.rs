use eventfold::Event;

#[derive(Event)]
enum OrderEvent {
    #[event(version = 0)]
    Placed { customer: String },
}

fn main() {}
