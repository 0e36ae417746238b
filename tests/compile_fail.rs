//! Misuses of `#[derive(Event)]` and `#[aggregate]` must fail to compile with a helpful message.
//!
//! The expected messages are in `tests/ui/*.stderr`; regenerate them with
//! `TRYBUILD=overwrite cargo test --test compile_fail --all-features` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
