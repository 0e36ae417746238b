use eventfold::Event;

#[derive(Event)]
#[event(version = 2)]
enum OrderEvent {
    #[event(prefix = "orders")]
    Placed { customer: String },
    Shipped {
        #[event(name = "carrier")]
        carrier: String,
    },
}

fn main() {}
