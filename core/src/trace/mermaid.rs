//! The sequence diagram: [`Trace::to_mermaid`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Trace, TraceKind};

/// How many characters of an error an arrow or note shows.
const ERROR_CHARS: usize = 60;

impl Trace {
    /// The flow as a Mermaid `sequenceDiagram`, to paste into a Markdown page (in a
    /// ```` ```mermaid ```` block) or the Mermaid live editor.
    ///
    /// * participants are the services, in order of first appearance, declared as
    ///   `participant s0 as order` (the aliases keep any service name from breaking the syntax);
    /// * an event is a note over its service, a pending timer a note `timer <name> due`;
    /// * a delivered message is an arrow `sender->>receiver: <name>` at the time it was
    ///   received (one per receiving consumer); a parked one is a `-x` arrow with the start of the
    ///   error; a message with no delivery among the records is a note on its sender; a dead
    ///   letter is a note on the service whose relay gave up;
    /// * lines are in time order of the records.
    ///
    /// Recorded text goes through Mermaid entity codes (`;` is `#59;`, `#` is `#35;`, `:` is
    /// `#58;`, and so on for `<`, `>`, `&`, `"`, `%`), control characters become spaces, and
    /// errors are shortened to 60 characters, so no record can break the diagram.
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
    ///     at: at(0), subject: "order-42 v1".into(), from_service: None, error: None,
    /// };
    /// let handled = TraceRecord {
    ///     kind: TraceKind::Received, service: "shipping".into(), at: at(20),
    ///     subject: "shipping-reactor".into(), from_service: Some("order".into()),
    ///     ..placed.clone()
    /// };
    /// let parked = TraceRecord {
    ///     kind: TraceKind::Parked, service: "payment".into(), at: at(900),
    ///     subject: "payment-reactor".into(), from_service: Some("order".into()),
    ///     error: Some("card declined; code #51".into()), ..placed.clone()
    /// };
    /// let trace = Trace::build(flow, [placed, handled, parked]);
    /// assert_eq!(trace.to_mermaid(), "\
    /// sequenceDiagram
    ///     %% flow 00000000-0000-0000-0000-000000000001: 3 records
    ///     participant s0 as order
    ///     participant s1 as shipping
    ///     participant s2 as payment
    ///     Note over s0: order.placed
    ///     s0->>s1: order.placed
    ///     s0-xs2: order.placed ✗ card declined#59; code #35;51
    /// ");
    /// ```
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("sequenceDiagram\n");
        let _ = writeln!(
            out,
            "    %% flow {}: {} record{}",
            self.correlation_id(),
            self.record_count(),
            if self.record_count() == 1 { "" } else { "s" }
        );
        let mut alias: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, service) in self.services().iter().enumerate() {
            alias.insert(service, index);
            let label = if service.trim().is_empty() {
                "(unnamed)".to_owned()
            } else {
                text(service)
            };
            let _ = writeln!(out, "    participant s{index} as {label}");
        }
        let alias = |service: &str| alias.get(service).map(|index| format!("s{index}"));

        for (record, node) in self.timeline() {
            let Some(at) = alias(&record.service) else {
                continue;
            };
            let name = text(&record.name);
            let sender = node.service().and_then(alias);
            let line = match (record.kind, sender) {
                (TraceKind::Event, _) => format!("Note over {at}: {name}"),
                (TraceKind::Timer, _) => format!("Note over {at}: timer {name} due"),
                (TraceKind::Sent, _) if !node.deliveries().is_empty() => continue,
                (TraceKind::Sent, _) => {
                    format!("Note over {at}: sent {name}, no receipt in these databases")
                }
                (TraceKind::Received, Some(from)) => format!("{from}->>{at}: {name}"),
                (TraceKind::Received, None) => {
                    format!("Note over {at}: received {name} from an unknown sender")
                }
                (TraceKind::Parked, Some(from)) => {
                    format!("{from}-x{at}: {name}{}", error(&record.error))
                }
                (TraceKind::Parked, None) => {
                    format!("Note over {at}: parked {name}{}", error(&record.error))
                }
                (TraceKind::DeadLetter, _) => {
                    format!("Note over {at}: dead letter {name}{}", error(&record.error))
                }
            };
            let _ = writeln!(out, "    {line}");
        }
        out
    }
}

/// ` ✗ <the start of the error>`, or nothing.
fn error(error: &Option<String>) -> String {
    match error {
        Some(error) => {
            let error = error.trim();
            let mut short: String = error.chars().take(ERROR_CHARS).collect();
            if error.chars().nth(ERROR_CHARS).is_some() {
                short.push('…');
            }
            format!(" ✗ {}", text(&short))
        }
        None => String::new(),
    }
}

/// Text that cannot break a Mermaid statement: the characters Mermaid's grammar gives a meaning
/// become entity codes, control characters (line breaks included) become spaces.
fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ';' | '#' | ':' | '<' | '>' | '&' | '"' | '%' | '{' | '}' => {
                let _ = write!(out, "#{};", u32::from(c));
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_what_mermaid_parses() {
        assert_eq!(
            text("a;b#c:d<br>e&f\"g%%h{i}\nj"),
            "a#59;b#35;c#58;d#60;br#62;e#38;f#34;g#37;#37;h#123;i#125; j"
        );
        assert_eq!(text("order.placed"), "order.placed");
    }

    #[test]
    fn errors_are_shortened_on_a_character_boundary() {
        let long = "é".repeat(100);
        assert_eq!(error(&Some(long)), format!(" ✗ {}…", "é".repeat(60)));
        assert_eq!(error(&Some(" short ".into())), " ✗ short");
        assert_eq!(error(&None), "");
    }
}
