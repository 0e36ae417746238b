//! Running instances across definition versions: data migrations, steps matched by name.

use std::time::Duration;

use eventfold_saga::testing::SagaTest;
use eventfold_saga::{
    Command, Input, MigrationError, Saga, SagaError, SagaEvent, SagaState, SagaStatus,
};
use serde_json::json;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct V1 {
    amount: u64,
}
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct V2 {
    amount_cents: u64,
}

fn cmd<D>(
    name: &'static str,
) -> impl Fn(&D) -> Result<Command, eventfold_saga::StepError> + Send + Sync + 'static {
    move |_| Ok(Command::from_json("t", name, json!({})))
}

const T: Duration = Duration::from_secs(30);

fn v1() -> eventfold_saga::SagaDefinition<V1> {
    Saga::<V1>::define("pay", 1)
        .step("reserve", |s| {
            s.invoke(cmd("r")).compensate(cmd("u")).timeout(T)
        })
        .step("charge", |s| s.invoke(cmd("c")).timeout(T))
        .build()
        .expect("valid")
}

/// The timeout of the first attempt of the step `charge`, the current step of
/// [`history_at_v1`].
fn charge_timed_out() -> eventfold_saga::TimerKey {
    eventfold_saga::TimerKey {
        step: "charge".into(),
        attempt: 1,
        kind: eventfold_saga::TimerKind::Timeout,
    }
}

fn history_at_v1() -> (Vec<SagaEvent>, SagaState) {
    let def = v1();
    let mut t = SagaTest::new(&def).given_started(V1 { amount: 12 });
    t.when_reply("reserve", json!({}));
    (t.history().to_vec(), t.state().clone())
}

#[test]
fn a_running_instance_is_migrated_and_resumed_by_step_name() {
    let (_, state) = history_at_v1();
    let v2 = Saga::<V2>::define("pay", 2)
        .step("audit", |s| s.local(|_| Ok(()))) // added before: not run for running instances
        .step("reserve", |s| {
            s.invoke(cmd("r")).compensate(cmd("u")).timeout(T)
        })
        .step("charge", |s| s.invoke(cmd("c")).timeout(T))
        .migrate_from(1, |old| {
            let amount = old["amount"]
                .as_u64()
                .ok_or_else(|| MigrationError("no amount".into()))?;
            Ok(json!({ "amount_cents": amount * 100 }))
        })
        .build()
        .expect("valid");
    let reply = eventfold_saga::Reply {
        saga_id: state.saga_id,
        step: "charge".into(),
        attempt: 1,
        kind: eventfold_saga::CommandKind::Action,
        outcome: eventfold_saga::Outcome::success(json!({})),
    };
    let decision = v2
        .decide(&state, Input::Reply(reply), chrono::Utc::now())
        .expect("decide");
    let t = decision.transition().expect("a transition");
    assert!(
        matches!(&t.events[0], SagaEvent::Migrated { from_version: 1, to_version: 2, data } if data["amount_cents"] == 1200)
    );
    let mut state = state;
    t.events.iter().for_each(|e| state.apply(e));
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(state.definition_version, 2);
    assert!(state.step("audit").is_none());
}

#[test]
fn a_current_step_missing_from_the_new_definition_fails_the_saga_with_a_reason() {
    let (_, state) = history_at_v1();
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Same {
        amount: u64,
    }
    let v2 = Saga::<Same>::define("pay", 2)
        .step("reserve", |s| {
            s.invoke(cmd("r")).compensate(cmd("u")).timeout(T)
        })
        .step("charge_card", |s| s.invoke(cmd("c")).timeout(T)) // "charge" renamed
        .build()
        .expect("valid");
    let timer = charge_timed_out();
    let decision = v2
        .decide(&state, Input::TimerFired(timer), chrono::Utc::now())
        .expect("decide");
    let mut state = state;
    decision
        .transition()
        .expect("a transition")
        .events
        .iter()
        .for_each(|e| state.apply(e));
    match &state.status {
        SagaStatus::Failed { reason } => assert!(
            reason.contains("step charge") && reason.contains("version 2"),
            "{reason}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn undecodable_data_fails_the_saga_and_a_newer_instance_is_refused() {
    let (_, state) = history_at_v1();
    let v2 = Saga::<V2>::define("pay", 2) // no migration: V1 data does not decode as V2
        .step("reserve", |s| {
            s.invoke(cmd("r")).compensate(cmd("u")).timeout(T)
        })
        .step("charge", |s| s.invoke(cmd("c")).timeout(T))
        .build()
        .expect("valid");
    let timer = charge_timed_out();
    let decision = v2
        .decide(&state, Input::TimerFired(timer.clone()), chrono::Utc::now())
        .expect("decide");
    let t = decision.transition().expect("a transition");
    assert!(
        matches!(&t.events[..], [SagaEvent::Failed { reason }] if reason.contains("does not decode"))
    );

    let mut newer = state.clone();
    newer.definition_version = 3;
    let err = v1()
        .decide(&newer, Input::TimerFired(timer), chrono::Utc::now())
        .expect_err("newer");
    assert!(matches!(
        err,
        SagaError::NewerDefinition {
            instance_version: 3,
            known_version: 1,
            ..
        }
    ));
}
