// The event and error types shared by the `#[aggregate]` UI tests, pulled in with
// `include!("shared/order.rs");` after `use eventfold::{aggregate, Event};`. This file sits below
// `tests/ui/shared/`, so the `tests/ui/*.rs` glob of `tests/compile_fail.rs` does not build it alone.

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, thiserror::Error)]
#[error("rejected")]
struct Rejected;
