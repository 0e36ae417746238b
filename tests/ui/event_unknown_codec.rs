use eventfold::Event;

#[derive(Event)]
#[event(codec = "xml")]
enum OrderEvent {
    Placed { customer: String },
}

fn main() {}
