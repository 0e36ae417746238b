use eventfold::Event;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Placed {
    #[prost(string, tag = "1")]
    pub customer: String,
}

#[derive(Event)]
#[event(codec = "protobuf")]
enum OrderEvent {
    Placed(Placed),
    Shipped { carrier: String },
    Cancelled,
}

fn main() {}
