//! The tick events and the `note-ticks` reaction of the local-reactor tests: one `effect.noted`
//! event in `effects/all` per tick, caused by it, appended in the reaction's transaction (so a
//! tick that took effect twice shows as two effects with the same causation id).

use eventfold::eventstore::{ExpectedVersion, UnitOfWork};
use eventfold::saga::choreography::{FlowContext, Reaction};
use eventfold::{BoxError, Envelope, Event, NewEvent, StreamId};

/// What the writers append.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum TickEvent {
    /// The `n`-th tick.
    Ticked { n: u64 },
}

/// The reaction: one `effect.noted` event per tick, caused by it, in the reaction's transaction.
pub struct Note;

impl<U: UnitOfWork> Reaction<U> for Note {
    type Event = TickEvent;

    fn name(&self) -> &str {
        "note-ticks"
    }

    async fn react(
        &self,
        ctx: &mut FlowContext<'_, U>,
        event: &Envelope<TickEvent>,
    ) -> Result<(), BoxError> {
        let mut effect = NewEvent::raw("effect.noted", 1, Vec::new());
        effect.causation_id = Some(event.event_id);
        let effects = StreamId::new("effects", "all")?;
        ctx.uow()
            .append(&effects, ExpectedVersion::Any, vec![effect])
            .await?;
        Ok(())
    }
}
