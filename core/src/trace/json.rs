//! The JSON shape: `impl Serialize for Trace` and [`Trace::to_json`].

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use super::{Trace, TraceKind, TraceNode, TraceRecord};

#[derive(Serialize)]
struct TraceJson<'a> {
    correlation_id: Uuid,
    records: usize,
    services: &'a [String],
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
    roots: Vec<Uuid>,
    nodes: Vec<NodeJson<'a>>,
}

#[derive(Serialize)]
struct NodeJson<'a> {
    id: Uuid,
    depth: usize,
    parent: Option<Uuid>,
    children: Vec<Uuid>,
    kind: Option<TraceKind>,
    name: &'a str,
    service: Option<&'a str>,
    at: DateTime<Utc>,
    subject: Option<&'a str>,
    causation_id: Option<Uuid>,
    missing_parent: Option<Uuid>,
    cycle_cut: Option<Uuid>,
    deliveries: &'a [TraceRecord],
    dead_letters: &'a [TraceRecord],
    also_recorded: &'a [TraceRecord],
}

impl<'a> From<TraceNode<'a>> for NodeJson<'a> {
    fn from(node: TraceNode<'a>) -> Self {
        NodeJson {
            id: node.id(),
            depth: node.depth(),
            parent: node.parent().map(|parent| parent.id()),
            children: node.children().map(|child| child.id()).collect(),
            kind: node.kind(),
            name: node.name(),
            service: node.service(),
            at: node.at(),
            subject: node.subject(),
            causation_id: node.causation_id(),
            missing_parent: node.missing_parent(),
            cycle_cut: node.cycle_cut(),
            deliveries: node.deliveries(),
            dead_letters: node.dead_letters(),
            also_recorded: node.also_recorded(),
        }
    }
}

impl Serialize for Trace {
    /// The shape documented in the [module documentation](super#json).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TraceJson {
            correlation_id: self.correlation_id(),
            records: self.record_count(),
            services: self.services(),
            first_at: self.first_at(),
            last_at: self.last_at(),
            roots: self.roots().map(|root| root.id()).collect(),
            nodes: self.iter().map(NodeJson::from).collect(),
        }
        .serialize(serializer)
    }
}

impl Serialize for TraceNode<'_> {
    /// One element of `nodes` in the [module documentation](super#json)'s shape.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        NodeJson::from(*self).serialize(serializer)
    }
}

impl Trace {
    /// The trace as pretty-printed JSON, in the shape documented in the
    /// [module documentation](super#json).
    ///
    /// # Errors
    ///
    /// Only what [`serde_json::to_string_pretty`] reports; a trace has no map with non-string
    /// keys and no failing field, so this does not fail in practice.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use eventfold_core::trace::{Trace, TraceKind, TraceRecord};
    /// use uuid::Uuid;
    ///
    /// let flow = Uuid::from_u128(1);
    /// let placed = TraceRecord {
    ///     kind: TraceKind::Event, id: Uuid::from_u128(10), correlation_id: flow,
    ///     causation_id: Some(Uuid::from_u128(9)), name: "order.placed".into(),
    ///     service: "order".into(), at: Utc.timestamp_millis_opt(1_714_557_600_000).unwrap(),
    ///     subject: "order-42 v1".into(), from_service: None, error: None,
    /// };
    /// let json: serde_json::Value = serde_json::from_str(&Trace::build(flow, [placed]).to_json()?)?;
    /// assert_eq!(json["records"], 1);
    /// assert_eq!(json["services"][0], "order");
    /// let node = &json["nodes"][0];
    /// assert_eq!(json["roots"][0], node["id"]);
    /// assert_eq!(node["kind"], "event");
    /// assert_eq!(node["depth"], 0);
    /// assert_eq!(node["missing_parent"], "00000000-0000-0000-0000-000000000009");
    /// assert_eq!(node["at"], "2024-05-01T10:00:00Z");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}
