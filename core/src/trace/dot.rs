//! The Graphviz graph: [`Trace::to_dot`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::text::one_line;
use super::{Trace, TraceKind, TraceNode};

impl Trace {
    /// The forest as a Graphviz DOT `digraph`, to draw with `dot -Tsvg`.
    ///
    /// * one node per trace node, named by its id, labelled with its kind and name, its
    ///   service and its subject, then one line per delivery (`→ <service> [<consumer>]`,
    ///   `✗ parked by <service>: <error>`) and dead letter (`✗ dead letter: <error>`);
    /// * nodes with a parked delivery or a dead letter are red, pending timers are notes, nodes
    ///   whose origin is not among the records are dashed;
    /// * an edge goes from each cause to its effect;
    /// * the nodes written by one service are grouped in a `subgraph cluster_<n>` labelled with
    ///   the service (`n` is the service's index in [`Trace::services`]);
    /// * a missing cause is a dashed node `not in these databases` with a dashed edge, and a
    ///   cut cycle a red dashed edge labelled `cycle cut`.
    ///
    /// Quotes and backslashes in recorded text are escaped, line breaks become `\n` and other
    /// control characters are escaped as in [`Trace::to_text`], so any record gives valid DOT.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use eventfold_core::trace::{Trace, TraceKind, TraceRecord};
    /// use uuid::Uuid;
    ///
    /// let flow = Uuid::from_u128(1);
    /// let at = |ms: i64| Utc.timestamp_millis_opt(1_714_557_600_000 + ms).unwrap();
    /// let placed = TraceRecord {
    ///     kind: TraceKind::Event, id: Uuid::from_u128(10), correlation_id: flow,
    ///     causation_id: None, name: "order.placed".into(), service: "order".into(),
    ///     at: at(0), subject: "order \"42\" v1".into(), from_service: None, error: None,
    /// };
    /// let paid = TraceRecord {
    ///     id: Uuid::from_u128(11), causation_id: Some(placed.id), name: "payment.charged".into(),
    ///     service: "payment".into(), at: at(12), subject: "payment-42 v1".into(),
    ///     ..placed.clone()
    /// };
    /// let trace = Trace::build(flow, [placed, paid]);
    /// assert_eq!(trace.to_dot(), r#"digraph flow {
    ///     label="flow 00000000-0000-0000-0000-000000000001";
    ///     labelloc=t;
    ///     fontname="Helvetica";
    ///     node [shape=box, style=rounded, fontname="Helvetica"];
    ///     edge [fontname="Helvetica"];
    ///     subgraph cluster_0 {
    ///         label="order";
    ///         "00000000-0000-0000-0000-00000000000a" [label="event order.placed\norder\n[order \"42\" v1]"];
    ///     }
    ///     subgraph cluster_1 {
    ///         label="payment";
    ///         "00000000-0000-0000-0000-00000000000b" [label="event payment.charged\npayment\n[payment-42 v1]"];
    ///     }
    ///     "00000000-0000-0000-0000-00000000000a" -> "00000000-0000-0000-0000-00000000000b";
    /// }
    /// "#);
    /// ```
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph flow {\n");
        let _ = writeln!(out, "    label=\"flow {}\";", self.correlation_id());
        out.push_str("    labelloc=t;\n");
        out.push_str("    fontname=\"Helvetica\";\n");
        out.push_str("    node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
        out.push_str("    edge [fontname=\"Helvetica\"];\n");

        for (index, service) in self.services().iter().enumerate() {
            let mut nodes = self
                .iter()
                .filter(|node| node.service() == Some(service.as_str()))
                .peekable();
            if nodes.peek().is_none() {
                continue;
            }
            let _ = writeln!(out, "    subgraph cluster_{index} {{");
            let _ = writeln!(out, "        label=\"{}\";", escape(service));
            for node in nodes {
                let _ = writeln!(out, "        {}", node_statement(node));
            }
            out.push_str("    }\n");
        }
        for node in self.iter().filter(|node| node.service().is_none()) {
            let _ = writeln!(out, "    {}", node_statement(node));
        }

        let mut missing = BTreeSet::new();
        for node in self.iter() {
            if let Some(cause) = node.missing_parent() {
                if missing.insert(cause) {
                    let _ = writeln!(
                        out,
                        "    \"{cause}\" [label=\"{cause}\\nnot in these databases\", \
                         style=dashed];"
                    );
                }
                let _ = writeln!(out, "    \"{cause}\" -> \"{}\" [style=dashed];", node.id());
            }
            if let Some(cause) = node.cycle_cut() {
                let _ = writeln!(
                    out,
                    "    \"{cause}\" -> \"{}\" [style=dashed, color=red, label=\"cycle cut\"];",
                    node.id()
                );
            }
            if let Some(parent) = node.parent() {
                let _ = writeln!(out, "    \"{}\" -> \"{}\";", parent.id(), node.id());
            }
        }
        out.push_str("}\n");
        out
    }
}

/// `"<id>" [label="…", …];`
fn node_statement(node: TraceNode<'_>) -> String {
    let mut label = Vec::new();
    match node.origin() {
        Some(origin) => {
            label.push(format!("{} {}", origin.kind.label(), escape(&origin.name)));
            label.push(escape(&origin.service));
            if !origin.subject.is_empty() {
                label.push(format!("[{}]", escape(&origin.subject)));
            }
        }
        None => {
            label.push(format!("message {}", escape(node.name())));
            if let Some(service) = node.service() {
                label.push(escape(service));
            }
            label.push("(origin not in these databases)".to_owned());
        }
    }
    for record in node.also_recorded() {
        label.push(format!(
            "≡ also {} by {}",
            record.kind.label(),
            escape(&record.service)
        ));
    }
    let error = |error: &Option<String>| match error {
        Some(error) => format!(": {}", escape(error)),
        None => String::new(),
    };
    let mut failed = false;
    for record in node.deliveries() {
        let consumer = if record.subject.is_empty() {
            String::new()
        } else {
            format!(" [{}]", escape(&record.subject))
        };
        if record.kind == TraceKind::Parked {
            failed = true;
            label.push(format!(
                "✗ parked by {}{consumer}{}",
                escape(&record.service),
                error(&record.error)
            ));
        } else {
            label.push(format!("→ {}{consumer}", escape(&record.service)));
        }
    }
    for record in node.dead_letters() {
        failed = true;
        label.push(format!("✗ dead letter{}", error(&record.error)));
    }

    let mut attributes = vec![format!("label=\"{}\"", label.join("\\n"))];
    if node.kind() == Some(TraceKind::Timer) {
        attributes.push("shape=note".to_owned());
    }
    if node.origin().is_none() {
        attributes.push("style=\"rounded,dashed\"".to_owned());
    }
    if failed {
        attributes.push("color=red".to_owned());
    }
    format!("\"{}\" [{}];", node.id(), attributes.join(", "))
}

/// Text for a quoted DOT string: `"` and `\` escaped, line breaks as `\n`, other control
/// characters escaped as text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {
                // `\u{1b}` would read as an escape to Graphviz: spell it with a doubled backslash.
                let _ = write!(out, "\\{}", one_line(&c.to_string()));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_dot_strings_closed() {
        assert_eq!(escape(r#"a "b" \c"#), r#"a \"b\" \\c"#);
        assert_eq!(escape("line\r\nnext"), "line\\nnext");
        assert_eq!(escape("tab\tbell\u{7}"), "tab\\\\tbell\\\\u{7}");
    }
}
