use eventfold::Event;

struct Money(u64);

#[derive(Event)]
enum OrderEvent {
    Placed { total: Money },
}

fn main() {}
