//! The terminal rendering: [`Trace::to_text`].

use std::fmt;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::{Trace, TraceKind, TraceNode, TraceRecord};

/// The deepest level drawn with its own indentation; deeper nodes are drawn at this level with
/// their depth written out.
const MAX_INDENT: usize = 24;

impl Trace {
    /// The forest as an indented tree, one line per record, for a terminal.
    ///
    /// The header names the flow, counts records and services and gives the time span in
    /// RFC 3339 (UTC, milliseconds). Every other line starts with its time relative to the
    /// flow's first record (`+12.3ms`, `+1.250s`, `+2m03.000s`, `+1h02m03s`, `+3d04h05m`):
    /// what a reader looks for in a flow is the gaps (a consumer lagging, a retry, a timeout),
    /// and twenty identical leading characters of absolute timestamps on every line hide them.
    /// The absolute time is one addition away from the header, and the JSON keeps it.
    ///
    /// A node's line reads `service: kind name [subject]`; the lines under it are its own
    /// records and notes, then its effects:
    ///
    /// * `→ received by <service> [<consumer>]`: a delivery;
    /// * `✗ parked by <service> [<consumer>]: <error>`: a consumer gave up on it;
    /// * `✗ dead letter at <service> [<subject>]: <error>`: the relay gave up on it;
    /// * `↑ caused by <id>, not in these databases`: a root whose cause was not given;
    /// * `↻ caused by <id>, one of its own effects: cycle cut here`: bad data, cut;
    /// * `≡ also recorded by <service> as <kind> <name> [<subject>]`: a second origin record
    ///   for the same id.
    ///
    /// A node whose origin was not given (only the receiver's database) reads
    /// `<sender>: message <name> (origin not in these databases)`, with no time of its own.
    /// A causal chain deeper than 24 levels keeps the indentation of level 24, and its deeper
    /// lines say `[depth N]`.
    /// Control characters in recorded text are escaped (`\n`, `\u{1b}`), so a record cannot
    /// break the layout or send escape sequences to the terminal.
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
    /// let charged = TraceRecord {
    ///     kind: TraceKind::Received, causation_id: None, service: "payment".into(),
    ///     at: at(12), subject: "payment-reactor".into(), from_service: Some("order".into()),
    ///     ..placed.clone()
    /// };
    /// let paid = TraceRecord {
    ///     kind: TraceKind::Event, id: Uuid::from_u128(11), causation_id: Some(placed.id),
    ///     name: "payment.charged".into(), service: "payment".into(), at: at(1250),
    ///     subject: "payment-42 v1".into(), ..placed.clone()
    /// };
    /// let trace = Trace::build(flow, [placed, charged, paid]);
    /// assert_eq!(trace.to_text(), "\
    /// flow 00000000-0000-0000-0000-000000000001: 3 records, 2 services (order, payment), \
    /// 2024-05-01T10:00:00.000Z to 2024-05-01T10:00:01.250Z (1.250s)
    ///  +0.0ms  order: event order.placed [order-42 v1]
    /// +12.0ms  │  → received by payment [payment-reactor]
    /// +1.250s  └─ payment: event payment.charged [payment-42 v1]
    /// ");
    /// ```
    pub fn to_text(&self) -> String {
        let Some(first) = self.first_at() else {
            return format!("flow {}: no records\n", self.correlation_id());
        };
        let last = self.last_at().unwrap_or(first);
        let mut out = String::new();
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(
            out,
            "flow {}: {}, {} ({}), {} to {} ({})",
            self.correlation_id(),
            plural(self.record_count(), "record"),
            plural(self.services().len(), "service"),
            self.services()
                .iter()
                .map(|s| one_line(s).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            rfc3339(first),
            rfc3339(last),
            duration(last - first),
        );

        let mut lines: Vec<(String, String)> = Vec::new();
        let time = |at: DateTime<Utc>| format!("+{}", duration(at - first));
        // (node, prefix of its line, prefix of what hangs under it, connector)
        let mut stack: Vec<(TraceNode<'_>, String, String, &str)> = Vec::new();
        for root in self.roots().rev() {
            stack.push((root, String::new(), String::new(), ""));
        }
        while let Some((node, prefix, under, connector)) = stack.pop() {
            let head = match node.origin() {
                Some(origin) => {
                    let line = format!(
                        "{}: {} {}{}",
                        one_line(&origin.service),
                        origin.kind.label(),
                        one_line(&origin.name),
                        subject(&origin.subject),
                    );
                    (time(origin.at), line)
                }
                None => {
                    let line = format!(
                        "{}: message {} (origin not in these databases)",
                        one_line(node.service().unwrap_or("?")),
                        one_line(node.name()),
                    );
                    (String::new(), line)
                }
            };
            let deep = if node.depth() > MAX_INDENT {
                format!("[depth {}] ", node.depth())
            } else {
                String::new()
            };
            lines.push((head.0, format!("{prefix}{connector}{deep}{}", head.1)));

            let detail = format!(
                "{under}{}",
                if node.children().len() > 0 {
                    "│  "
                } else {
                    "   "
                }
            );
            if let Some(cause) = node.missing_parent() {
                lines.push((
                    String::new(),
                    format!("{detail}↑ caused by {cause}, not in these databases"),
                ));
            }
            if let Some(cause) = node.cycle_cut() {
                let what = if cause == node.id() {
                    "itself".to_owned()
                } else {
                    format!("{cause}, one of its own effects")
                };
                lines.push((
                    String::new(),
                    format!("{detail}↻ caused by {what}: cycle cut here"),
                ));
            }
            let mut others: Vec<&TraceRecord> = node
                .also_recorded()
                .iter()
                .chain(node.deliveries())
                .chain(node.dead_letters())
                .collect();
            others.sort_by(|a, b| super::tree::record_order(a, b));
            for record in others {
                lines.push((time(record.at), format!("{detail}{}", other_line(record))));
            }

            let children: Vec<TraceNode<'_>> = node.children().collect();
            for (i, child) in children.iter().enumerate().rev() {
                let last = i + 1 == children.len();
                let (connector, more) = if last {
                    ("└─ ", "   ")
                } else {
                    ("├─ ", "│  ")
                };
                // Past MAX_INDENT, a child is drawn in its parent's column: a long causal chain
                // stays on the screen (and the output linear in its length).
                let prefix = if child.depth() > MAX_INDENT {
                    &prefix
                } else {
                    &under
                };
                stack.push((*child, prefix.clone(), format!("{prefix}{more}"), connector));
            }
        }

        let width = lines
            .iter()
            .map(|(t, _)| t.chars().count())
            .max()
            .unwrap_or(0);
        for (time, line) in lines {
            let _ = writeln!(out, "{time:>width$}  {line}");
        }
        out
    }
}

impl fmt::Display for Trace {
    /// The same as [`Trace::to_text`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

fn other_line(record: &TraceRecord) -> String {
    let error = |error: &Option<String>| match error {
        Some(e) => format!(": {}", one_line(e)),
        None => String::new(),
    };
    match record.kind {
        TraceKind::Received => format!(
            "→ received by {}{}",
            one_line(&record.service),
            subject(&record.subject)
        ),
        TraceKind::Parked => format!(
            "✗ parked by {}{}{}",
            one_line(&record.service),
            subject(&record.subject),
            error(&record.error)
        ),
        TraceKind::DeadLetter => format!(
            "✗ dead letter at {}{}{}",
            one_line(&record.service),
            subject(&record.subject),
            error(&record.error)
        ),
        TraceKind::Event | TraceKind::Sent | TraceKind::Timer => format!(
            "≡ also recorded by {} as {} {}{}",
            one_line(&record.service),
            record.kind.label(),
            one_line(&record.name),
            subject(&record.subject)
        ),
    }
}

fn subject(subject: &str) -> String {
    if subject.is_empty() {
        String::new()
    } else {
        format!(" [{}]", one_line(subject))
    }
}

/// Text on one line, with control characters escaped (`\n`, `\t`, `\u{1b}`): recorded text
/// cannot break the layout or drive the terminal.
pub(super) fn one_line(text: &str) -> OneLine<'_> {
    OneLine(text)
}

/// See [`one_line`].
pub(super) struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// RFC 3339, UTC, milliseconds.
pub(super) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A duration in the largest unit that keeps it short: `12.3ms`, `1.250s`, `2m03.000s`,
/// `1h02m03s`, `3d04h05m`.
pub(super) fn duration(delta: TimeDelta) -> String {
    let sign = if delta < TimeDelta::zero() { "-" } else { "" };
    let delta = delta.abs();
    if let Some(us) = delta.num_microseconds().filter(|&us| us < 1_000_000) {
        return format!("{sign}{}.{}ms", us / 1000, us % 1000 / 100);
    }
    let ms = delta.num_milliseconds();
    let (s, ms) = (ms / 1000, ms % 1000);
    let (m, s) = (s / 60, s % 60);
    let (h, m) = (m / 60, m % 60);
    let (d, h) = (h / 24, h % 24);
    if d > 0 {
        format!("{sign}{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{sign}{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{sign}{m}m{s:02}.{ms:03}s")
    } else {
        format!("{sign}{s}.{ms:03}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_short_unit() {
        let cases = [
            (TimeDelta::zero(), "0.0ms"),
            (TimeDelta::microseconds(12_345), "12.3ms"),
            (TimeDelta::microseconds(999_999), "999.9ms"),
            (TimeDelta::milliseconds(1_250), "1.250s"),
            (TimeDelta::milliseconds(123_000), "2m03.000s"),
            (TimeDelta::seconds(3_723), "1h02m03s"),
            (
                TimeDelta::seconds(3 * 86_400 + 4 * 3_600 + 5 * 60 + 6),
                "3d04h05m",
            ),
            (TimeDelta::milliseconds(-1_250), "-1.250s"),
            (TimeDelta::MAX, "106751991167d07h12m"),
        ];
        for (delta, expected) in cases {
            assert_eq!(duration(delta), expected, "{delta:?}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            one_line("card\ndeclined\t\u{1b}[31m red").to_string(),
            "card\\ndeclined\\t\\u{1b}[31m red"
        );
        assert_eq!(one_line("ünïcode ✓").to_string(), "ünïcode ✓");
    }
}
