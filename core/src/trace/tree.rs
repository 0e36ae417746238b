//! Linking records into the causal forest: [`Trace::build`] and the accessors.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{TraceKind, TraceRecord};

/// The causal forest of one flow, built from the records of one or several databases.
///
/// See the [module documentation](super) for what a node is, how records are merged and how
/// the forest is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    correlation_id: Uuid,
    records: usize,
    services: Vec<String>,
    span: Option<(DateTime<Utc>, DateTime<Utc>)>,
    nodes: Vec<NodeData>,
    by_id: BTreeMap<Uuid, usize>,
    roots: Vec<usize>,
    /// Every node, depth first (pre-order, children in time order).
    order: Vec<usize>,
}

/// What the forest keeps about one id.
#[derive(Debug, Clone, PartialEq)]
struct NodeData {
    id: Uuid,
    origin: Option<TraceRecord>,
    also_recorded: Vec<TraceRecord>,
    deliveries: Vec<TraceRecord>,
    dead_letters: Vec<TraceRecord>,
    at: DateTime<Utc>,
    causation_id: Option<Uuid>,
    parent: Option<usize>,
    missing_parent: Option<Uuid>,
    cycle_cut: Option<Uuid>,
    children: Vec<usize>,
    depth: usize,
}

impl NodeData {
    fn new(record: TraceRecord) -> Self {
        let mut node = NodeData {
            id: record.id,
            origin: None,
            also_recorded: Vec::new(),
            deliveries: Vec::new(),
            dead_letters: Vec::new(),
            at: record.at,
            causation_id: None,
            parent: None,
            missing_parent: None,
            cycle_cut: None,
            children: Vec::new(),
            depth: 0,
        };
        node.add(record);
        node
    }

    fn add(&mut self, record: TraceRecord) {
        match record.kind {
            TraceKind::Event | TraceKind::Sent | TraceKind::Timer => {
                if self.origin.is_none() {
                    self.origin = Some(record);
                } else {
                    self.also_recorded.push(record);
                }
            }
            TraceKind::Received | TraceKind::Parked => self.deliveries.push(record),
            TraceKind::DeadLetter => self.dead_letters.push(record),
        }
    }

    /// The first record that is not the origin: the node's stand-in when the origin is
    /// unknown. Records arrive in time order, so this is the earliest.
    fn first_other(&self) -> Option<&TraceRecord> {
        match (self.deliveries.first(), self.dead_letters.first()) {
            (Some(d), Some(l)) => Some(if record_order(d, l).is_le() { d } else { l }),
            (d, l) => d.or(l),
        }
    }
}

/// The total order of records: time, then kind (an event before the message sent in the same
/// transaction), then id, then every other field. Equal records are adjacent after sorting, and
/// the result does not depend on the order the records were given in.
pub(super) fn record_order(a: &TraceRecord, b: &TraceRecord) -> Ordering {
    a.at.cmp(&b.at)
        .then(a.kind.cmp(&b.kind))
        .then(a.id.cmp(&b.id))
        .then_with(|| a.service.cmp(&b.service))
        .then_with(|| a.subject.cmp(&b.subject))
        .then_with(|| a.name.cmp(&b.name))
        .then_with(|| a.causation_id.cmp(&b.causation_id))
        .then_with(|| a.correlation_id.cmp(&b.correlation_id))
        .then_with(|| a.from_service.cmp(&b.from_service))
        .then_with(|| a.error.cmp(&b.error))
}

impl Trace {
    /// Links the records of one flow into a causal forest.
    ///
    /// `records` may come from several databases of several services, in any order; records
    /// that are equal in every field are kept once. Records with the same id are one node: its
    /// origin (the [`Event`](TraceKind::Event), [`Sent`](TraceKind::Sent) or
    /// [`Timer`](TraceKind::Timer) record), its deliveries ([`Received`](TraceKind::Received),
    /// [`Parked`](TraceKind::Parked)) and its [dead letters](TraceKind::DeadLetter). A node's
    /// parent is the node of its causation id; a node whose cause is not among the records is a
    /// root that remembers the missing id, and a causal cycle (bad data) is cut and remembered
    /// where it closes. The result does not depend on the order of `records`, and building
    /// never fails: any set of records gives a forest.
    ///
    /// `correlation_id` names the flow in the renderings; records are not filtered by it.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use eventfold_core::trace::{Trace, TraceKind, TraceRecord};
    /// use uuid::Uuid;
    ///
    /// let flow = Uuid::from_u128(1);
    /// let (placed, charge) = (Uuid::from_u128(10), Uuid::from_u128(11));
    /// let at = |ms: i64| Utc.timestamp_millis_opt(1_714_557_600_000 + ms).unwrap();
    /// let record = |kind, id, cause, name: &str, service: &str, ms, subject: &str| TraceRecord {
    ///     kind, id, correlation_id: flow, causation_id: cause, name: name.into(),
    ///     service: service.into(), at: at(ms), subject: subject.into(),
    ///     from_service: (kind == TraceKind::Received).then(|| "order".to_owned()), error: None,
    /// };
    /// // What the order service's database recorded...
    /// let order_db = vec![
    ///     record(TraceKind::Event, placed, None, "order.placed", "order", 0, "order-42 v1"),
    ///     record(TraceKind::Sent, charge, Some(placed), "payment.charge", "order", 1, "payments/42"),
    /// ];
    /// // ...and the payment service's: the same message, received.
    /// let payment_db = vec![
    ///     record(TraceKind::Received, charge, Some(placed), "payment.charge", "payment", 9, "payment-commands"),
    /// ];
    /// let trace = Trace::build(flow, order_db.into_iter().chain(payment_db));
    ///
    /// assert_eq!(trace.len(), 2); // two ids: the event and the message
    /// assert_eq!(trace.record_count(), 3);
    /// assert_eq!(trace.services(), ["order", "payment"]);
    /// let root = trace.roots().next().unwrap();
    /// assert_eq!(root.name(), "order.placed");
    /// let message = root.children().next().unwrap();
    /// assert_eq!(message.origin().unwrap().kind, TraceKind::Sent);
    /// assert_eq!(message.deliveries()[0].service, "payment");
    /// assert_eq!(message.depth(), 1);
    /// ```
    pub fn build(correlation_id: Uuid, records: impl IntoIterator<Item = TraceRecord>) -> Self {
        let mut records: Vec<TraceRecord> = records.into_iter().collect();
        records.sort_by(record_order);
        records.dedup();

        let span = match (records.first(), records.last()) {
            (Some(first), Some(last)) => Some((first.at, last.at)),
            _ => None,
        };
        let record_count = records.len();

        let mut services: Vec<String> = Vec::new();
        let mut note_service = |service: &str| {
            if !services.iter().any(|s| s == service) {
                services.push(service.to_owned());
            }
        };
        for record in &records {
            if let Some(from) = record.sender() {
                note_service(from);
            }
            note_service(&record.service);
        }

        let mut nodes: Vec<NodeData> = Vec::new();
        let mut by_id: BTreeMap<Uuid, usize> = BTreeMap::new();
        for record in records {
            match by_id.get(&record.id) {
                Some(&index) => nodes[index].add(record),
                None => {
                    by_id.insert(record.id, nodes.len());
                    nodes.push(NodeData::new(record));
                }
            }
        }

        for node in &mut nodes {
            let (at, causation_id) = match &node.origin {
                Some(origin) => (origin.at, origin.causation_id),
                None => (
                    node.first_other().map_or(node.at, |r| r.at),
                    node.deliveries
                        .iter()
                        .chain(&node.dead_letters)
                        .find_map(|r| r.causation_id),
                ),
            };
            node.at = at;
            node.causation_id = causation_id;
        }
        for node in &mut nodes {
            if let Some(cause) = node.causation_id {
                match by_id.get(&cause) {
                    Some(&parent) => node.parent = Some(parent),
                    None => node.missing_parent = Some(cause),
                }
            }
        }

        cut_cycles(&mut nodes);

        let by_time = |nodes: &[NodeData], a: &usize, b: &usize| {
            let (a, b) = (&nodes[*a], &nodes[*b]);
            a.at.cmp(&b.at).then(a.id.cmp(&b.id))
        };
        let mut roots = Vec::new();
        for index in 0..nodes.len() {
            match nodes[index].parent {
                Some(parent) => nodes[parent].children.push(index),
                None => roots.push(index),
            }
        }
        for index in 0..nodes.len() {
            let mut children = std::mem::take(&mut nodes[index].children);
            children.sort_by(|a, b| by_time(&nodes, a, b));
            nodes[index].children = children;
        }
        roots.sort_by(|a, b| by_time(&nodes, a, b));

        // Depth first without recursion: a flow may be a long causal chain.
        let mut order = Vec::with_capacity(nodes.len());
        let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
        while let Some((index, depth)) = stack.pop() {
            nodes[index].depth = depth;
            order.push(index);
            stack.extend(nodes[index].children.iter().rev().map(|&c| (c, depth + 1)));
        }

        Trace {
            correlation_id,
            records: record_count,
            services,
            span,
            nodes,
            by_id,
            roots,
            order,
        }
    }

    /// The flow's correlation id, as given to [`Trace::build`].
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }

    /// The number of distinct records (duplicates dropped).
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// The number of nodes (distinct ids).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no record at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The services that wrote a record or sent a received message, in order of first
    /// appearance (the time of their first record).
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The time of the earliest record, if any.
    pub fn first_at(&self) -> Option<DateTime<Utc>> {
        self.span.map(|(first, _)| first)
    }

    /// The time of the latest record, if any (a pending timer's due time may be in the future).
    pub fn last_at(&self) -> Option<DateTime<Utc>> {
        self.span.map(|(_, last)| last)
    }

    /// The roots, in time order: the nodes with no cause, a cause that is not among the records
    /// ([`TraceNode::missing_parent`]) or a cause cut out of a cycle ([`TraceNode::cycle_cut`]).
    pub fn roots(&self) -> impl DoubleEndedIterator<Item = TraceNode<'_>> + ExactSizeIterator + '_ {
        self.roots.iter().map(|&index| self.handle(index))
    }

    /// Every node, depth first: a root, then its children in time order (each with its own
    /// children), then the next root. Every node is visited exactly once.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = TraceNode<'_>> + ExactSizeIterator + '_ {
        self.order.iter().map(|&index| self.handle(index))
    }

    /// The node of an id.
    pub fn node(&self, id: Uuid) -> Option<TraceNode<'_>> {
        self.by_id.get(&id).map(|&index| self.handle(index))
    }

    /// The first node, depth first, with this event or message name.
    pub fn find(&self, name: &str) -> Option<TraceNode<'_>> {
        self.iter().find(|node| node.name() == name)
    }

    /// Every node, depth first, with this event or message name.
    pub fn find_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = TraceNode<'a>> + 'a {
        self.iter().filter(move |node| node.name() == name)
    }

    /// Every distinct record with its node, in time order.
    pub(super) fn timeline(&self) -> Vec<(&TraceRecord, TraceNode<'_>)> {
        let mut timeline: Vec<(&TraceRecord, TraceNode<'_>)> = self
            .iter()
            .flat_map(|node| node.records().map(move |record| (record, node)))
            .collect();
        timeline.sort_by(|(a, _), (b, _)| record_order(a, b));
        timeline
    }

    fn handle(&self, index: usize) -> TraceNode<'_> {
        TraceNode { trace: self, index }
    }
}

/// Cuts every causal cycle (a node that is, through its parents, its own cause). Each node has at
/// most one parent, so every cycle is found by walking up from each node once; the cycle is
/// cut above its earliest node, which becomes a root remembering the cause it lost.
fn cut_cycles(nodes: &mut [NodeData]) {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; nodes.len()];
    let mut path = Vec::new();
    for start in 0..nodes.len() {
        let mut current = Some(start);
        while let Some(index) = current {
            match state[index] {
                NEW => {
                    state[index] = ON_PATH;
                    path.push(index);
                    current = nodes[index].parent;
                }
                ON_PATH => {
                    let cycle_start = path.iter().position(|&i| i == index).unwrap_or(0);
                    let earliest = path[cycle_start..]
                        .iter()
                        .copied()
                        .min_by(|&a, &b| {
                            let (a, b) = (&nodes[a], &nodes[b]);
                            a.at.cmp(&b.at).then(a.id.cmp(&b.id))
                        })
                        .unwrap_or(index);
                    let node = &mut nodes[earliest];
                    node.parent = None;
                    node.cycle_cut = node.causation_id;
                    current = None;
                }
                _ => current = None,
            }
        }
        for index in path.drain(..) {
            state[index] = DONE;
        }
    }
}

/// One node of a [`Trace`]: everything recorded about one event or message id, with its place
/// in the forest. A cheap handle (a reference and an index): copy it freely.
#[derive(Clone, Copy)]
pub struct TraceNode<'a> {
    trace: &'a Trace,
    index: usize,
}

impl<'a> TraceNode<'a> {
    fn data(&self) -> &'a NodeData {
        &self.trace.nodes[self.index]
    }

    /// The event or message id.
    pub fn id(&self) -> Uuid {
        self.data().id
    }

    /// The kind of the origin (event, sent message or timer), `None` when only deliveries or
    /// dead letters of this id were recorded.
    pub fn kind(&self) -> Option<TraceKind> {
        self.data().origin.as_ref().map(|origin| origin.kind)
    }

    /// The event or message name, from the origin, else from a delivery or dead letter.
    pub fn name(&self) -> &'a str {
        let data = self.data();
        data.origin
            .as_ref()
            .or_else(|| data.first_other())
            .map_or("", |record| record.name.as_str())
    }

    /// The service that wrote it: the origin's, else the sender named by a delivery, else the
    /// service whose relay dead-lettered it.
    pub fn service(&self) -> Option<&'a str> {
        let data = self.data();
        match &data.origin {
            Some(origin) => Some(origin.service.as_str()),
            None => data
                .deliveries
                .iter()
                .find_map(TraceRecord::sender)
                .or_else(|| data.dead_letters.first().map(|r| r.service.as_str())),
        }
    }

    /// Where the origin was written (stream and version, topic and key, saga step), `None` when
    /// the origin is unknown.
    pub fn subject(&self) -> Option<&'a str> {
        self.data().origin.as_ref().map(|r| r.subject.as_str())
    }

    /// When it happened: the origin's time (a timer's due time), else the earliest delivery or
    /// dead letter. Siblings are ordered by this time, then by id.
    pub fn at(&self) -> DateTime<Utc> {
        self.data().at
    }

    /// The record that created it: an event, a message sent or a timer.
    pub fn origin(&self) -> Option<&'a TraceRecord> {
        self.data().origin.as_ref()
    }

    /// Other origin records with the same id (normally none): the same event found in two
    /// databases with different details, or an event and a message sharing an id. Kept so that
    /// no record is lost, and shown as such.
    pub fn also_recorded(&self) -> &'a [TraceRecord] {
        &self.data().also_recorded
    }

    /// The [`Received`](TraceKind::Received) and [`Parked`](TraceKind::Parked) records of this
    /// message, in time order (one per consumer that handled or parked it).
    pub fn deliveries(&self) -> &'a [TraceRecord] {
        &self.data().deliveries
    }

    /// The [`DeadLetter`](TraceKind::DeadLetter) records of this message (the relay gave up).
    pub fn dead_letters(&self) -> &'a [TraceRecord] {
        &self.data().dead_letters
    }

    /// Every record of this node: the origin, then the others, each group in time order.
    pub fn records(&self) -> impl Iterator<Item = &'a TraceRecord> + use<'a> {
        let data = self.data();
        data.origin
            .iter()
            .chain(&data.also_recorded)
            .chain(&data.deliveries)
            .chain(&data.dead_letters)
    }

    /// What caused it: the origin's causation id, else a delivery's or dead letter's.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.data().causation_id
    }

    /// The cause, when it is not among the records ("caused by X, not in these databases").
    pub fn missing_parent(&self) -> Option<Uuid> {
        self.data().missing_parent
    }

    /// The cause this node lost because it closed a causal cycle (its own id when it names
    /// itself as its cause). Such a node is a root.
    pub fn cycle_cut(&self) -> Option<Uuid> {
        self.data().cycle_cut
    }

    /// The node of its cause, `None` for a root.
    pub fn parent(&self) -> Option<TraceNode<'a>> {
        self.data().parent.map(|index| self.trace.handle(index))
    }

    /// Its effects, in time order.
    pub fn children(
        &self,
    ) -> impl DoubleEndedIterator<Item = TraceNode<'a>> + ExactSizeIterator + use<'a> {
        let trace = self.trace;
        self.data()
            .children
            .iter()
            .map(move |&index| trace.handle(index))
    }

    /// How many causes above it: 0 for a root.
    pub fn depth(&self) -> usize {
        self.data().depth
    }
}

impl fmt::Debug for TraceNode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceNode")
            .field("id", &self.id())
            .field("kind", &self.kind())
            .field("name", &self.name())
            .field("service", &self.service())
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}
