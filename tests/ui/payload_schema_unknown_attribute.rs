use eventfold::PayloadSchema;

#[derive(serde::Serialize, serde::Deserialize, PayloadSchema)]
#[payload_schema(name = "Line")]
struct Line {
    sku: String,
}

fn main() {}
