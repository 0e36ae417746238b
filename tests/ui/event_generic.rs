use eventfold::Event;

#[derive(Event)]
enum OrderEvent<T> {
    Placed { payload: T },
}

fn main() {}
