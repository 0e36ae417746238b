use eventfold::aggregate;

#[aggregate]
struct Order {
    placed: bool,
}

fn main() {}
