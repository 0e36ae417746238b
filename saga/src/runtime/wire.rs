//! How saga commands and replies travel: as outbox messages (JSON payloads, CloudEvents headers
//! plus the saga's own headers), and back from broker records.

use eventfold_core::OutboxMessage;
use eventfold_core::outbox::headers;
use eventfold_outbox::Record;
use uuid::Uuid;

use crate::message::{Reply, SagaCommand};
use crate::runtime::error::RuntimeError;

/// The header that names the topic a participant sends its reply to.
pub const REPLY_TO: &str = "eventfold_reply_to";
/// The header with the saga instance's id.
pub const SAGA_ID: &str = "eventfold_saga_id";
/// The header with the saga type.
pub const SAGA_TYPE: &str = "eventfold_saga_type";
/// The header with the step's name.
pub const SAGA_STEP: &str = "eventfold_saga_step";
/// The header with the attempt.
pub const SAGA_ATTEMPT: &str = "eventfold_saga_attempt";
/// The header with `action` or `compensation`.
pub const SAGA_KIND: &str = "eventfold_saga_kind";
/// The message type of every reply.
pub const REPLY_TYPE: &str = "saga.reply";

/// The outbox message that carries `command` to its participant. Its key is the saga id (the
/// commands of one instance stay in order), its payload the whole [`SagaCommand`] as JSON.
pub(crate) fn command_message(
    command: &SagaCommand,
    reply_to: &str,
    source: &str,
    causation_id: Option<Uuid>,
) -> Result<OutboxMessage, RuntimeError> {
    let payload = serde_json::to_vec(command).map_err(|e| RuntimeError::Encode {
        saga_id: command.saga_id,
        what: format!("the {} command of step {}", command.kind, command.step),
        reason: e.to_string(),
    })?;
    let mut message = OutboxMessage::new(
        command.topic.clone(),
        command.saga_id.to_string(),
        command.message_type.clone(),
        payload,
    );
    message.aggregate_type = "saga".to_owned();
    set_saga_headers(
        &mut message,
        command.saga_id,
        &command.saga_type,
        &command.step,
        command.attempt,
        command.kind.as_str(),
    );
    message
        .headers
        .insert(REPLY_TO.to_owned(), reply_to.to_owned());
    set_flow_headers(&mut message, source, command.correlation_id, causation_id);
    Ok(message)
}

/// The outbox message that carries `reply` to the orchestrator (`reply_to`, keyed by saga id).
pub(crate) fn reply_message(
    reply: &Reply,
    command: &SagaCommand,
    reply_to: &str,
    source: &str,
    causation_id: Uuid,
) -> Result<OutboxMessage, RuntimeError> {
    let payload = serde_json::to_vec(reply).map_err(|e| RuntimeError::Encode {
        saga_id: reply.saga_id,
        what: format!("the reply to step {}", reply.step),
        reason: e.to_string(),
    })?;
    let mut message = OutboxMessage::new(
        reply_to.to_owned(),
        reply.saga_id.to_string(),
        REPLY_TYPE,
        payload,
    );
    message.aggregate_type = "saga".to_owned();
    set_saga_headers(
        &mut message,
        reply.saga_id,
        &command.saga_type,
        &reply.step,
        reply.attempt,
        reply.kind.as_str(),
    );
    set_flow_headers(
        &mut message,
        source,
        command.correlation_id,
        Some(causation_id),
    );
    Ok(message)
}

/// The CloudEvents headers of the flow: source, correlation, causation, content type; with the
/// feature `otel`, the current span's trace context.
fn set_flow_headers(
    message: &mut OutboxMessage,
    source: &str,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
) {
    let h = &mut message.headers;
    h.insert(headers::SOURCE.to_owned(), source.to_owned());
    h.insert(
        headers::CORRELATION_ID.to_owned(),
        correlation_id.to_string(),
    );
    if let Some(causation) = causation_id {
        h.insert(headers::CAUSATION_ID.to_owned(), causation.to_string());
    }
    h.insert(
        headers::CONTENT_TYPE.to_owned(),
        "application/json".to_owned(),
    );
    #[cfg(feature = "otel")]
    eventfold_core::trace_context::inject_current_if_absent(h);
}

fn set_saga_headers(
    message: &mut OutboxMessage,
    saga_id: Uuid,
    saga_type: &str,
    step: &str,
    attempt: u32,
    kind: &str,
) {
    let h = &mut message.headers;
    h.insert(SAGA_ID.to_owned(), saga_id.to_string());
    h.insert(SAGA_TYPE.to_owned(), saga_type.to_owned());
    h.insert(SAGA_STEP.to_owned(), step.to_owned());
    h.insert(SAGA_ATTEMPT.to_owned(), attempt.to_string());
    h.insert(SAGA_KIND.to_owned(), kind.to_owned());
}

/// Decodes a command record (a participant's input).
pub(crate) fn decode_command(record: &Record) -> Result<SagaCommand, RuntimeError> {
    serde_json::from_slice(&record.payload).map_err(|e| RuntimeError::Decode {
        message_id: record.message_id,
        topic: record.topic.clone(),
        what: "a saga command",
        reason: e.to_string(),
    })
}

/// Decodes a reply record (the orchestrator's input).
pub(crate) fn decode_reply(record: &Record) -> Result<Reply, RuntimeError> {
    serde_json::from_slice(&record.payload).map_err(|e| RuntimeError::Decode {
        message_id: record.message_id,
        topic: record.topic.clone(),
        what: "a saga reply",
        reason: e.to_string(),
    })
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use eventfold_core::Headers;
    use eventfold_core::trace_context::{self, TRACEPARENT};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::message::{CommandKind, Outcome};

    fn command() -> SagaCommand {
        let saga_id = Uuid::now_v7();
        SagaCommand {
            saga_id,
            saga_type: "checkout".into(),
            step: "charge".into(),
            attempt: 1,
            kind: CommandKind::Action,
            request_key: SagaCommand::request_key_for(saga_id, "charge", CommandKind::Action),
            correlation_id: Uuid::now_v7(),
            topic: "payments".into(),
            message_type: "payment.charge".into(),
            payload: serde_json::json!({}),
        }
    }

    #[test]
    fn commands_and_replies_record_the_sending_span() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("saga-test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let command = command();
            let untraced = command_message(&command, "replies", "orders", None).expect("encode");
            assert!(
                !untraced.headers.contains_key(TRACEPARENT),
                "outside any span"
            );

            let span = tracing::info_span!("saga step");
            let _entered = span.enter();
            let mut expected = Headers::new();
            assert!(trace_context::inject_current(&mut expected));
            let sent = command_message(&command, "replies", "orders", None).expect("encode");
            assert_eq!(sent.headers.get(TRACEPARENT), expected.get(TRACEPARENT));
            let reply = command.reply(Outcome::Success {
                payload: serde_json::json!({}),
            });
            let replied =
                reply_message(&reply, &command, "replies", "payments", sent.id).expect("encode");
            assert_eq!(replied.headers.get(TRACEPARENT), expected.get(TRACEPARENT));
        });
    }
}
