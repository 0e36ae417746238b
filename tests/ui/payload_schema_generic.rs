use eventfold::PayloadSchema;

#[derive(serde::Serialize, serde::Deserialize, PayloadSchema)]
struct Page<T> {
    items: Vec<T>,
}

fn main() {}
