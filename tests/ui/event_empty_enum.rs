use eventfold::Event;

#[derive(Event)]
enum OrderEvent {}

fn main() {}
