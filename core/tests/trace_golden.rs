//! Golden tests of the flow trace's renderings: an orchestrated saga and a choreographed flow,
//! each merged from the databases of three services, drawn as text, Mermaid, DOT and JSON and
//! compared with the files under `tests/golden/`.
//!
//! After an intended change of a rendering, rewrite the files and review their diff:
//! `UPDATE_GOLDEN=1 cargo test -p eventfold-core --test trace_golden`.

mod common;

use std::path::PathBuf;

use common::{choreography_databases, choreography_flow_id, merged, saga_databases, saga_flow_id};
use eventfold_core::trace::Trace;

/// Compares `actual` with the golden file `name`, or rewrites the file when `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, actual)
            .unwrap_or_else(|e| panic!("cannot write golden file {}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {}: {e}\n(create it with UPDATE_GOLDEN=1)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendering (- golden, + actual):\n{}\n\
         If the change is intended: UPDATE_GOLDEN=1 cargo test -p eventfold-core --test \
         trace_golden, then review the diff of tests/golden.",
        path.display(),
        line_diff(&expected, actual)
    );
}

/// A line diff (longest common subsequence), with two lines of context around changes.
fn line_diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = String::new();
    let mut last_shown = None;
    for (k, (op, line)) in ops.iter().enumerate() {
        if changed.iter().any(|&c| c.abs_diff(k) <= 2) {
            if last_shown.is_some_and(|l: usize| l + 1 < k) {
                out.push_str("  ...\n");
            }
            out.push_str(&format!("{op} {line}\n"));
            last_shown = Some(k);
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(the files differ in their final line break)\n");
    }
    out
}

#[test]
fn saga_trace_renders_as_the_golden_files() {
    let databases = saga_databases();
    let trace = Trace::build(saga_flow_id(), merged(&databases));
    golden("saga.txt", &trace.to_text());
    golden("saga.mmd", &trace.to_mermaid());
    golden("saga.dot", &trace.to_dot());
    golden("saga.json", &trace.to_json().expect("a trace serializes"));
}

#[test]
fn choreography_trace_renders_as_the_golden_files() {
    let databases = choreography_databases();
    let trace = Trace::build(choreography_flow_id(), merged(&databases));
    golden("choreography.txt", &trace.to_text());
    golden("choreography.mmd", &trace.to_mermaid());
    golden("choreography.dot", &trace.to_dot());
    golden(
        "choreography.json",
        &trace.to_json().expect("a trace serializes"),
    );
}

#[test]
fn one_database_alone_shows_what_the_others_hold_as_missing() {
    let databases = choreography_databases();
    let shipping = databases
        .iter()
        .find(|(service, _)| *service == "shipping")
        .map(|(_, records)| records.clone())
        .expect("the shipping database");
    let trace = Trace::build(choreography_flow_id(), shipping);
    golden("choreography-shipping-only.txt", &trace.to_text());
}

#[test]
fn the_order_of_the_databases_does_not_change_the_trace() {
    for (flow, mut databases) in [
        (saga_flow_id(), saga_databases()),
        (choreography_flow_id(), choreography_databases()),
    ] {
        let forward = Trace::build(flow, merged(&databases));
        databases.reverse();
        let mut backward_records = merged(&databases);
        backward_records.reverse();
        let backward = Trace::build(flow, backward_records);
        assert_eq!(forward.to_text(), backward.to_text());
        assert_eq!(forward, backward);
    }
}

#[test]
fn line_diff_marks_changed_lines() {
    assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n- b\n+ x\n  c\n");
}
