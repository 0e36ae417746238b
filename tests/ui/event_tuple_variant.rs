use eventfold::Event;

#[derive(Event)]
enum OrderEvent {
    Placed(String, u64),
}

fn main() {}
