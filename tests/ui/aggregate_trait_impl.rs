use eventfold::aggregate;

#[derive(Default)]
struct Order;

trait Describe {
    fn describe(&self) -> String;
}

#[aggregate]
impl Describe for Order {
    fn describe(&self) -> String {
        "order".to_owned()
    }
}

fn main() {}
