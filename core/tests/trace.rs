//! The flow trace's forest: merging databases, duplicates, missing causes, cycles, long chains,
//! and (proptest) that any records give a trace in which every record appears exactly once.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use common::{
    RecordExt, choreography_databases, choreography_flow_id, id, merged, rec, saga_databases,
    saga_flow_id, t0,
};
use eventfold_core::trace::{Trace, TraceKind, TraceNode, TraceRecord};
use proptest::prelude::*;
use uuid::Uuid;

use TraceKind::{DeadLetter, Event, Parked, Received, Sent, Timer};

/// The lines of the text rendering that belong to `node` (its own line and its details).
fn text_lines_of(node: TraceNode<'_>) -> usize {
    1 + node.also_recorded().len()
        + node.deliveries().len()
        + node.dead_letters().len()
        + usize::from(node.missing_parent().is_some())
        + usize::from(node.cycle_cut().is_some())
}

#[test]
fn a_message_found_as_sent_in_one_database_and_received_in_another_is_one_node() {
    let (command, reserved) = (id(1), id(2));
    let sender = vec![rec(Sent, command, "inventory.reserve", "order", 0).on("inventory/42")];
    let receiver = vec![
        rec(Received, command, "inventory.reserve", "inventory", 900)
            .sent_by("order")
            .on("inventory-commands"),
        rec(Event, reserved, "stock.reserved", "inventory", 1_000).caused_by(command),
    ];
    let trace = Trace::build(id(0xf0), sender.into_iter().chain(receiver));

    assert_eq!(trace.len(), 2);
    assert_eq!(trace.record_count(), 3);
    assert_eq!(trace.services(), ["order", "inventory"]);
    let message = trace.node(command).expect("the message's node");
    assert_eq!(message.kind(), Some(Sent));
    assert_eq!(message.service(), Some("order"));
    assert_eq!(message.deliveries().len(), 1);
    assert_eq!(message.deliveries()[0].service, "inventory");
    assert_eq!(message.missing_parent(), None);
    let children: Vec<Uuid> = message.children().map(|c| c.id()).collect();
    assert_eq!(children, [reserved]);
    assert_eq!(trace.node(reserved).map(|n| n.depth()), Some(1));
    assert!(
        trace
            .to_text()
            .contains("→ received by inventory [inventory-commands]"),
        "{}",
        trace.to_text()
    );
    assert!(trace.to_mermaid().contains("s0->>s1: inventory.reserve"));
}

#[test]
fn every_consumer_of_a_message_is_a_delivery_of_its_node() {
    let trace = Trace::build(choreography_flow_id(), merged(&choreography_databases()));
    let charged = trace.find("payment.charged").expect("payment.charged");
    let receivers: Vec<(&str, &str)> = charged
        .deliveries()
        .iter()
        .map(|d| (d.service.as_str(), d.subject.as_str()))
        .collect();
    assert_eq!(
        receivers,
        [("shipping", "shipping-reactor"), ("order", "order-reactor")]
    );
    let effects: Vec<&str> = charged.children().map(|c| c.name()).collect();
    assert_eq!(
        effects,
        ["shipment.scheduled", "notification.email", "order.paid"]
    );
    let mail = trace.find("notification.email").expect("the e-mail");
    assert_eq!(mail.dead_letters().len(), 1);
    assert_eq!(trace.roots().len(), 1);
    assert_eq!(trace.iter().map(|n| n.depth()).max(), Some(3));
}

#[test]
fn the_saga_trace_shows_steps_replies_parking_timeout_and_compensation() {
    let trace = Trace::build(saga_flow_id(), merged(&saga_databases()));
    assert_eq!(trace.services(), ["order", "inventory", "payment"]);
    let charge = trace.find("payment.charge").expect("the payment command");
    assert_eq!(charge.deliveries()[0].kind, Parked);
    assert_eq!(charge.deliveries()[0].service, "payment");
    assert_eq!(charge.parent().map(|p| p.name()), Some("saga.step_started"));
    let release = trace.find("inventory.release").expect("the compensation");
    let path: Vec<&str> = std::iter::successors(Some(release), |n| n.parent())
        .map(|n| n.name())
        .collect();
    assert_eq!(
        path,
        [
            "inventory.release",
            "saga.compensating",
            "saga.step_timed_out",
            "saga.step_started",
            "saga.reply",
            "inventory.reserve",
            "saga.step_started",
            "saga.started",
            "order.placed",
        ]
    );
    let roots: Vec<(&str, Option<TraceKind>)> =
        trace.roots().map(|r| (r.name(), r.kind())).collect();
    assert_eq!(
        roots,
        [("order.placed", Some(Event)), ("step.timeout", Some(Timer))]
    );
    assert_eq!(trace.find_all("saga.reply").count(), 2);
    let unanswered = trace
        .find_all("saga.reply")
        .last()
        .expect("the second reply");
    assert!(unanswered.deliveries().is_empty());
}

#[test]
fn the_same_database_given_twice_counts_once() {
    let databases = choreography_databases();
    let once = Trace::build(choreography_flow_id(), merged(&databases));
    let twice = Trace::build(
        choreography_flow_id(),
        merged(&databases).into_iter().chain(merged(&databases)),
    );
    assert_eq!(twice.record_count(), merged(&databases).len());
    assert_eq!(twice, once);
    assert_eq!(twice.to_text(), once.to_text());
}

#[test]
fn a_cause_outside_the_databases_makes_a_root_that_names_it() {
    let (elsewhere, received, reaction) = (id(0x99), id(1), id(2));
    let trace = Trace::build(
        id(0xf0),
        [
            rec(Received, received, "order.placed", "payment", 0)
                .caused_by(elsewhere)
                .sent_by("order"),
            rec(Event, reaction, "payment.charged", "payment", 10).caused_by(received),
        ],
    );
    let root = trace.roots().next().expect("a root");
    assert_eq!(root.id(), received);
    assert_eq!(root.origin(), None);
    assert_eq!(root.kind(), None);
    assert_eq!(root.service(), Some("order"));
    assert_eq!(root.causation_id(), Some(elsewhere));
    assert_eq!(root.missing_parent(), Some(elsewhere));
    assert_eq!(trace.services(), ["order", "payment"]);
    let text = trace.to_text();
    assert!(
        text.contains(&format!("↑ caused by {elsewhere}, not in these databases")),
        "{text}"
    );
    assert!(
        text.contains("order: message order.placed (origin not in these databases)"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&trace.to_json().expect("json")).expect("valid JSON");
    assert_eq!(json["nodes"][0]["missing_parent"], elsewhere.to_string());
    assert_eq!(json["nodes"][0]["kind"], serde_json::Value::Null);
    assert!(
        trace
            .to_dot()
            .contains(&format!("\"{elsewhere}\" -> \"{received}\" [style=dashed]"))
    );
}

#[test]
fn a_causal_cycle_is_cut_at_its_earliest_node_and_shown() {
    // a → b → c → a, and d hangs off b; e causes itself.
    let (a, b, c, d, e) = (id(1), id(2), id(3), id(4), id(5));
    let trace = Trace::build(
        id(0xf0),
        [
            rec(Event, a, "a", "s", 10).caused_by(c),
            rec(Event, b, "b", "s", 20).caused_by(a),
            rec(Event, c, "c", "s", 30).caused_by(b),
            rec(Event, d, "d", "s", 40).caused_by(b),
            rec(Event, e, "e", "s", 50).caused_by(e),
        ],
    );
    assert_eq!(trace.iter().count(), 5);
    let roots: Vec<(Uuid, Option<Uuid>)> = trace.roots().map(|r| (r.id(), r.cycle_cut())).collect();
    assert_eq!(roots, [(a, Some(c)), (e, Some(e))]);
    let order: Vec<&str> = trace.iter().map(|n| n.name()).collect();
    assert_eq!(order, ["a", "b", "c", "d", "e"]);
    let text = trace.to_text();
    assert!(
        text.contains(&format!(
            "↻ caused by {c}, one of its own effects: cycle cut here"
        )),
        "{text}"
    );
    assert!(
        text.contains("↻ caused by itself: cycle cut here"),
        "{text}"
    );
    assert!(trace.to_dot().contains(&format!(
        "\"{c}\" -> \"{a}\" [style=dashed, color=red, label=\"cycle cut\"]"
    )));
}

#[test]
fn a_long_causal_chain_neither_recurses_nor_runs_off_the_screen() {
    const LENGTH: u128 = 20_000;
    let records = (0..LENGTH).map(|n| {
        let record = rec(Event, id(n), "step", "s", n as i64);
        if n == 0 {
            record
        } else {
            record.caused_by(id(n - 1))
        }
    });
    let trace = Trace::build(id(0xf0), records);
    assert_eq!(
        trace.iter().last().map(|n| n.depth()),
        Some(LENGTH as usize - 1)
    );

    let text = trace.to_text();
    assert_eq!(text.lines().count(), LENGTH as usize + 1);
    let widest = text.lines().skip(1).map(|l| l.chars().count()).max();
    assert!(widest.is_some_and(|w| w < 150), "widest line: {widest:?}");
    assert!(text.contains("[depth 19999] s: event step"));

    let json: serde_json::Value =
        serde_json::from_str(&trace.to_json().expect("json")).expect("flat JSON parses");
    assert_eq!(
        json["nodes"].as_array().map(Vec::len),
        Some(LENGTH as usize)
    );
    assert_eq!(trace.to_mermaid().lines().count(), LENGTH as usize + 3);
    assert_eq!(trace.to_dot().matches(" -> ").count(), LENGTH as usize - 1);
}

#[test]
fn no_records_give_an_empty_trace() {
    let flow = id(0xf0);
    let trace = Trace::build(flow, []);
    assert!(trace.is_empty());
    assert_eq!(trace.len(), 0);
    assert_eq!(trace.first_at(), None);
    assert_eq!(trace.to_text(), format!("flow {flow}: no records\n"));
    assert_eq!(
        trace.to_mermaid(),
        format!("sequenceDiagram\n    %% flow {flow}: 0 records\n")
    );
    let dot = trace.to_dot();
    assert!(!dot.contains("subgraph") && !dot.contains(" -> "), "{dot}");
    assert!(dot.ends_with("[fontname=\"Helvetica\"];\n}\n"), "{dot}");
}

// ---- any records ----

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(items).prop_map(str::to_owned)
}

const TEXTS: &[&str] = &[
    "order.placed",
    "",
    "semi;colon #hash: colon",
    "quote\" back\\slash \\n",
    "line\nbreak\r\u{1b}[31mred",
    "ünïcödé ✓ {end} <br> %% & -x ->>",
];

fn at() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        8 => (-2_000i64..2_000).prop_map(|us| t0() + TimeDelta::microseconds(us)),
        1 => Just(DateTime::<Utc>::MIN_UTC),
        1 => Just(DateTime::<Utc>::MAX_UTC),
    ]
}

fn record() -> impl Strategy<Value = TraceRecord> {
    (
        prop::sample::select(&[Event, Sent, Received, Parked, DeadLetter, Timer][..]),
        0u128..6,
        prop::option::of(0u128..8),
        pick(TEXTS),
        pick(&["order", "payment", "", "svc;#:\"x\"", "line\nbreak"]),
        at(),
        pick(TEXTS),
        prop::option::of(pick(&["order", "", "line\nbreak"])),
        prop::option::of(pick(TEXTS)),
        0u128..2,
    )
        .prop_map(
            |(kind, n, cause, name, service, at, subject, from_service, error, flow)| TraceRecord {
                kind,
                id: id(n),
                correlation_id: id(0xf0 + flow),
                causation_id: cause.map(id),
                name,
                service,
                at,
                subject,
                from_service,
                error,
            },
        )
}

/// Records with some exact duplicates among them.
fn records() -> impl Strategy<Value = Vec<TraceRecord>> {
    (
        prop::collection::vec(record(), 0..40),
        prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    )
        .prop_map(|(mut records, copies)| {
            if !records.is_empty() {
                let copies: Vec<TraceRecord> =
                    copies.iter().map(|i| i.get(&records).clone()).collect();
                records.extend(copies);
            }
            records
        })
}

/// A canonical order for comparing multisets of records.
fn sorted(mut records: Vec<TraceRecord>) -> Vec<TraceRecord> {
    records.sort_by_key(|r| format!("{r:?}"));
    records
}

/// Whether every `"` string of a DOT text closes on its line, and braces balance.
fn dot_is_well_formed(dot: &str) -> bool {
    let mut depth = 0i64;
    for line in dot.lines() {
        let (mut quoted, mut escaped) = (false, false);
        for c in line.chars() {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => quoted = false,
                (true, false, _) => {}
                (false, _, '"') => quoted = true,
                (false, _, '{') => depth += 1,
                (false, _, '}') => depth -= 1,
                (false, _, _) => {}
            }
        }
        if quoted || depth < 0 {
            return false;
        }
    }
    depth == 0
}

/// Whether no Mermaid statement carries a `;`, `#`, `:` or `%` of its own beyond the one `:`
/// after the arrow or note target (entity codes `#<digits>;` aside).
fn mermaid_is_well_formed(mermaid: &str) -> bool {
    mermaid.lines().skip(2).all(|line| {
        let mut plain = String::new();
        let mut rest = line;
        while let Some(start) = rest.find('#') {
            plain.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let digits = after.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 || !after[digits..].starts_with(';') {
                return false;
            }
            rest = &after[digits + 1..];
        }
        plain.push_str(rest);
        line.starts_with("    ")
            && !plain.contains(';')
            && !plain.contains('%')
            && plain.matches(':').count() == usize::from(!plain.starts_with("    participant"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_records_give_a_forest_with_every_record_once(records in records()) {
        let distinct: Vec<TraceRecord> = {
            let mut all = sorted(records.clone());
            all.dedup();
            all
        };
        let trace = Trace::build(id(0xf0), records.clone());

        // Every distinct record, in exactly one node; every id, one node, reached once.
        prop_assert_eq!(trace.record_count(), distinct.len());
        let in_nodes: Vec<TraceRecord> =
            trace.iter().flat_map(|n| n.records().cloned().collect::<Vec<_>>()).collect();
        prop_assert_eq!(sorted(in_nodes), distinct.clone());
        let ids: BTreeSet<Uuid> = distinct.iter().map(|r| r.id).collect();
        prop_assert_eq!(trace.len(), ids.len());
        let visited: Vec<Uuid> = trace.iter().map(|n| n.id()).collect();
        prop_assert_eq!(visited.len(), ids.len());
        prop_assert_eq!(visited.iter().copied().collect::<BTreeSet<_>>(), ids);

        // Links agree with each other.
        for node in trace.iter() {
            prop_assert_eq!(trace.node(node.id()).map(|n| n.id()), Some(node.id()));
            match node.parent() {
                Some(parent) => {
                    prop_assert_eq!(node.depth(), parent.depth() + 1);
                    prop_assert!(parent.children().any(|c| c.id() == node.id()));
                    prop_assert_eq!(node.causation_id(), Some(parent.id()));
                    prop_assert!(node.missing_parent().is_none() && node.cycle_cut().is_none());
                }
                None => {
                    prop_assert_eq!(node.depth(), 0);
                    prop_assert!(trace.roots().any(|r| r.id() == node.id()));
                    let explained = node.missing_parent().or(node.cycle_cut());
                    prop_assert_eq!(explained, node.causation_id());
                }
            }
        }

        // The order of the input does not matter.
        let mut reversed = records.clone();
        reversed.reverse();
        prop_assert_eq!(&Trace::build(id(0xf0), reversed), &trace);

        // Text: a header, then one line per node and per record or note under it.
        let text = trace.to_text();
        let expected_lines = 1 + trace.iter().map(text_lines_of).sum::<usize>();
        prop_assert_eq!(text.lines().count(), expected_lines, "{}", text);
        prop_assert!(!text.contains(char::from(0x1b)), "an escape character reached the terminal");

        // JSON: every node once, every record once.
        let json: serde_json::Value =
            serde_json::from_str(&trace.to_json().expect("json")).expect("valid JSON");
        let nodes = json["nodes"].as_array().cloned().unwrap_or_default();
        prop_assert_eq!(nodes.len(), trace.len());
        let json_ids: BTreeSet<String> =
            nodes.iter().filter_map(|n| n["id"].as_str().map(str::to_owned)).collect();
        prop_assert_eq!(json_ids.len(), trace.len());
        let count = |n: &serde_json::Value, list: &str| n[list].as_array().map_or(0, Vec::len);
        let json_records: usize = nodes
            .iter()
            .map(|n| {
                usize::from(!n["kind"].is_null())
                    + count(n, "deliveries")
                    + count(n, "dead_letters")
                    + count(n, "also_recorded")
            })
            .sum();
        prop_assert_eq!(json_records, distinct.len());

        // Diagrams stay syntactically closed whatever the text in the records.
        let dot = trace.to_dot();
        prop_assert!(dot_is_well_formed(&dot), "{}", dot);
        let mermaid = trace.to_mermaid();
        prop_assert!(mermaid_is_well_formed(&mermaid), "{}", mermaid);
    }
}
