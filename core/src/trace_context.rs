//! W3C trace context (`traceparent`, `tracestate`) between `tracing` spans and headers
//! (feature `otel`).
//!
//! With the feature on, what eventfold writes records the OpenTelemetry context of the current
//! [`tracing`] span (through [`tracing-opentelemetry`](tracing_opentelemetry)), and what it
//! consumes continues it, so one distributed trace spans the services of a flow:
//!
//! * [`NewEvent::encode`](crate::NewEvent::encode) (every repository command) sets `traceparent`
//!   and `tracestate` on the event from the current span, unless the command's metadata already
//!   has a `traceparent` (the caller's explicit one wins). The event's headers travel with its
//!   outbox message to the broker.
//! * A choreography reaction's writes carry the reaction span's context, saga commands and
//!   replies the context of the span that sends them.
//! * The consumer runs each record in a span whose parent is the record's context
//!   ([`continue_trace`]), and so do the reactions on the local log.
//!
//! Nothing is recorded when the current span has no valid OpenTelemetry context (no
//! `tracing-opentelemetry` layer installed, or no span): the headers stay as the caller set them.
//! Only the OpenTelemetry API is a dependency; the application installs an SDK, a tracer provider
//! and the layer, as it would for its own spans.
//!
//! The format is [W3C Trace Context](https://www.w3.org/TR/trace-context/): `traceparent` is
//! `{version}-{trace-id}-{parent-id}-{flags}` in lowercase hex. An invalid value (wrong length or
//! case, an all-zero id, version `ff`) is ignored, never an error; an invalid `tracestate` is
//! dropped and the `traceparent` kept.
//!
//! ```
//! use eventfold_core::Headers;
//! use eventfold_core::trace_context::{self, TRACEPARENT};
//! use eventfold_core::trace_context::opentelemetry::trace::TraceContextExt;
//!
//! let mut headers = Headers::new();
//! headers.insert(TRACEPARENT.into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
//! let parent = trace_context::parent_context(&headers).expect("a valid traceparent");
//! let span = parent.span();
//! assert_eq!(span.span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert!(span.span_context().is_remote() && span.span_context().is_sampled());
//!
//! headers.insert(TRACEPARENT.into(), "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into());
//! assert!(trace_context::parent_context(&headers).is_none(), "an all-zero trace id is invalid");
//! ```

use std::str::FromStr;

pub use opentelemetry;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metadata::Headers;

/// The header with the trace id, the parent span id and the flags.
pub const TRACEPARENT: &str = "traceparent";
/// The header with vendor-specific trace state (`key=value` list).
pub const TRACESTATE: &str = "tracestate";

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// `N` bytes from `2N` lowercase hex digits; `None` for any other input.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The remote span context of a `traceparent` value (and a `tracestate`), or `None` when the
/// `traceparent` is not valid W3C trace context.
///
/// A version above `00` is read by its first four fields, as the specification asks. Of the
/// flags, the sampled bit is kept.
///
/// ```
/// use eventfold_core::trace_context::parse_traceparent;
///
/// let cx = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", Some("congo=t61rcWkgMzE")).unwrap();
/// assert!(!cx.is_sampled());
/// assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
/// assert!(parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", None).is_none(), "uppercase");
/// assert!(parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).is_none(), "version ff");
/// ```
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let value = traceparent.trim_matches([' ', '\t']).as_bytes();
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let [version] = hex::<1>(&value[0..2])?;
    match version {
        0xff => return None,
        0 if value.len() != TRACEPARENT_LEN => return None,
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex::<16>(&value[3..35])?);
    let span_id = SpanId::from_bytes(hex::<8>(&value[36..52])?);
    let [flags] = hex::<1>(&value[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// The `traceparent` value of a span context (version `00`).
///
/// ```
/// use eventfold_core::trace_context::{format_traceparent, parse_traceparent};
///
/// let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// assert_eq!(format_traceparent(&parse_traceparent(value, None).unwrap()), value);
/// ```
pub fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The parent context that `headers` carry (`traceparent`, `tracestate`), or `None` when they
/// carry none or an invalid one.
pub fn parent_context(headers: &Headers) -> Option<Context> {
    let cx = parse_traceparent(
        headers.get(TRACEPARENT)?,
        headers.get(TRACESTATE).map(String::as_str),
    )?;
    Some(Context::new().with_remote_span_context(cx))
}

/// Sets `traceparent` from `cx`, and `tracestate` when `cx` has one (an older `tracestate` is
/// removed otherwise: it belonged to another parent).
pub fn inject(cx: &SpanContext, headers: &mut Headers) {
    headers.insert(TRACEPARENT.to_owned(), format_traceparent(cx));
    let state = cx.trace_state().header();
    if state.is_empty() {
        headers.remove(TRACESTATE);
    } else {
        headers.insert(TRACESTATE.to_owned(), state);
    }
}

/// Sets `traceparent` (and `tracestate`) from the OpenTelemetry context of the current `tracing`
/// span, replacing any there, when that span has a valid span context. Returns whether it did;
/// without a `tracing-opentelemetry` layer, or outside any span, the headers are left as they
/// are.
pub fn inject_current(headers: &mut Headers) -> bool {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return false;
    }
    inject(span_context, headers);
    true
}

/// [`inject_current`] unless `headers` already have a `traceparent` (set explicitly by the
/// caller, which wins). Returns whether it injected.
pub fn inject_current_if_absent(headers: &mut Headers) -> bool {
    !headers.contains_key(TRACEPARENT) && inject_current(headers)
}

/// Makes the trace context `headers` carry the parent of `span`, so the work done in `span`
/// belongs to the producer's trace. Call it before `span` is first entered (a started span's
/// parent cannot change). Returns whether the parent was set.
///
/// `span` is expected to be created in the current context. When the current span already
/// belongs to the carried trace (an enclosing consumer span continued it), nothing is changed:
/// `span` stays a child of the current span, deeper in the same trace. Without a valid context
/// in `headers`, or without a `tracing-opentelemetry` layer, nothing happens either.
///
/// ```
/// use eventfold_core::Headers;
/// use eventfold_core::trace_context::continue_trace;
///
/// let headers = Headers::from([("traceparent".to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())]);
/// let span = tracing::info_span!("handle");
/// // No subscriber with an OpenTelemetry layer is installed here: nothing to continue into.
/// assert!(!continue_trace(&span, &headers));
/// ```
pub fn continue_trace(span: &tracing::Span, headers: &Headers) -> bool {
    let Some(parent) = parent_context(headers) else {
        return false;
    };
    let incoming = parent.span().span_context().trace_id();
    let current = tracing::Span::current().context();
    if current.span().span_context().trace_id() == incoming {
        return false;
    }
    span.set_parent(parent).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use proptest::prelude::*;
    use tracing_subscriber::layer::SubscriberExt;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(traceparent: &str) -> Headers {
        Headers::from([(TRACEPARENT.to_owned(), traceparent.to_owned())])
    }

    /// A subscriber with an OpenTelemetry layer over an SDK tracer provider (no exporter).
    fn subscriber() -> (impl tracing::Subscriber + Send + Sync, SdkTracerProvider) {
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("eventfold-test"));
        (tracing_subscriber::registry().with(layer), provider)
    }

    fn context_of(span: &tracing::Span) -> SpanContext {
        span.context().span().span_context().clone()
    }

    #[test]
    fn valid_values_parse_and_invalid_ones_are_ignored() {
        let cx = parse_traceparent(VALID, None).expect("valid");
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_remote() && cx.is_sampled());
        // A future version: four fields read, more allowed after a dash.
        assert!(parse_traceparent(&format!("cc{}-what-ever", &VALID[2..]), None).is_some());
        assert!(parse_traceparent(&format!("cc{}x", &VALID[2..]), None).is_none());
        for bad in [
            "",
            "00",
            &VALID[..54],
            &format!("{VALID}-"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0Z",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0é736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?}");
        }
        // An invalid tracestate is dropped, the traceparent kept.
        let cx = parse_traceparent(VALID, Some("no equals sign")).expect("valid");
        assert_eq!(cx.trace_state().header(), "");
    }

    #[test]
    fn inject_writes_what_parse_reads_and_drops_a_stale_tracestate() {
        let cx = parse_traceparent(VALID, Some("a=1,b=2")).expect("valid");
        let mut h = headers("stale");
        inject(&cx, &mut h);
        assert_eq!(h[TRACEPARENT], VALID);
        assert_eq!(h[TRACESTATE], "a=1,b=2");
        assert_eq!(
            parent_context(&h).expect("parsed").span().span_context(),
            &cx
        );
        inject(&parse_traceparent(VALID, None).expect("valid"), &mut h);
        assert!(!h.contains_key(TRACESTATE), "{h:?}");
    }

    #[test]
    fn without_a_layer_nothing_is_injected_or_continued() {
        let span = tracing::info_span!("no-subscriber");
        let _entered = span.enter();
        let mut h = Headers::new();
        assert!(!inject_current(&mut h));
        assert!(h.is_empty());
        assert!(!continue_trace(
            &tracing::info_span!("child"),
            &headers(VALID)
        ));
    }

    #[test]
    fn the_current_span_is_injected_unless_the_caller_set_one() {
        let (subscriber, _provider) = subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let mut h = Headers::new();
            assert!(!inject_current(&mut h), "outside any span");
            let span = tracing::info_span!("producer");
            let _entered = span.enter();
            assert!(inject_current_if_absent(&mut h));
            let cx = context_of(&span);
            assert!(cx.is_valid());
            assert_eq!(h[TRACEPARENT], format_traceparent(&cx));

            let mut explicit = headers(VALID);
            assert!(!inject_current_if_absent(&mut explicit));
            assert_eq!(explicit[TRACEPARENT], VALID, "the caller's wins");
        });
    }

    #[test]
    fn a_span_continues_the_carried_trace_once() {
        let (subscriber, _provider) = subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let remote = parse_traceparent(VALID, None).expect("valid");
            let consumer = tracing::info_span!("consume");
            assert!(continue_trace(&consumer, &headers(VALID)));
            let _entered = consumer.enter();
            let cx = context_of(&consumer);
            assert_eq!(cx.trace_id(), remote.trace_id());
            assert_ne!(cx.span_id(), remote.span_id());

            // Nested: already in the trace, so the inner span stays a child of the outer one.
            let inner = tracing::info_span!("react");
            assert!(!continue_trace(&inner, &headers(VALID)));
            assert_eq!(context_of(&inner).trace_id(), remote.trace_id());

            // What the inner span writes is its own context, in the same trace.
            let _inner = inner.enter();
            let mut h = headers(VALID);
            assert!(inject_current(&mut h));
            let written = parse_traceparent(&h[TRACEPARENT], None).expect("valid");
            assert_eq!(written.trace_id(), remote.trace_id());
            assert_eq!(written.span_id(), context_of(&inner).span_id());
        });
    }

    proptest! {
        #[test]
        fn any_string_parses_without_panicking(traceparent in any::<String>(), state in any::<Option<String>>()) {
            if let Some(cx) = parse_traceparent(&traceparent, state.as_deref()) {
                prop_assert!(cx.is_valid());
            }
        }

        #[test]
        fn near_valid_strings_parse_without_panicking(
            traceparent in "[0-9a-fA-F\\-]{2}-[0-9a-f\\-é]{30,34}-[0-9a-f]{14,17}-[0-9a-f\\-]{1,5}",
        ) {
            if let Some(cx) = parse_traceparent(&traceparent, None) {
                prop_assert!(cx.is_valid());
            }
        }

        #[test]
        fn every_valid_context_round_trips(trace in 1u128.., span in 1u64.., sampled: bool) {
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let cx = SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, true, TraceState::default());
            let value = format_traceparent(&cx);
            prop_assert_eq!(value.len(), TRACEPARENT_LEN);
            prop_assert_eq!(parse_traceparent(&value, None), Some(cx));
        }
    }
}
