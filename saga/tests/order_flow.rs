//! The order flow (reserve stock, charge payment, schedule shipment) through the test kit.

use std::time::Duration;

use eventfold_saga::testing::SagaTest;
use eventfold_saga::{
    Command,
    CommandKind::{Action, Compensation},
    DefinitionError, Ignored, Input, Outcome, RetryPolicy, Saga, SagaDefinition, SagaStatus,
    TimerKind,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    reserved: bool,
    #[serde(default)]
    notes: Vec<String>,
}

fn order() -> Order {
    Order {
        id: "o-1".into(),
        reserved: false,
        notes: vec![],
    }
}

const T: Duration = Duration::from_secs(30);

fn flow() -> SagaDefinition<Order> {
    Saga::<Order>::define("order.place", 1)
        .step("reserve_stock", |s| {
            s.invoke(|o: &Order| Command::new("inventory.commands", "inventory.reserve", &o.id))
                .on_reply(|o: &mut Order, _: serde_json::Value| {
                    o.reserved = true;
                    Ok(())
                })
                .compensate(|o: &Order| {
                    Command::new("inventory.commands", "inventory.release", &o.id)
                })
                .timeout(T)
        })
        .step("charge_payment", |s| {
            s.invoke(|o: &Order| Command::new("payments.commands", "payment.charge", &o.id))
                .compensate(|o: &Order| Command::new("payments.commands", "payment.refund", &o.id))
                .timeout(T)
        })
        .step("schedule_shipment", |s| {
            s.invoke(|o: &Order| Command::new("shipping.commands", "shipment.schedule", &o.id))
                .compensate(|o: &Order| Command::new("shipping.commands", "shipment.cancel", &o.id))
                .timeout(T)
        })
        .build()
        .expect("valid")
}

const STEPS: [&str; 3] = ["reserve_stock", "charge_payment", "schedule_shipment"];

#[test]
fn happy_path_completes() {
    let def = flow();
    let mut t = SagaTest::new(&def).given_started(order());
    for step in STEPS {
        t.when_reply(step, json!({}));
    }
    t.then_status(&SagaStatus::Completed).then_commands(&[
        ("reserve_stock", Action),
        ("charge_payment", Action),
        ("schedule_shipment", Action),
    ]);
    assert!(t.data().reserved);
    assert_eq!(
        t.commands()[0].request_key,
        format!("{}:reserve_stock", t.state().saga_id)
    );
}

#[test]
fn failure_at_each_step_compensates_earlier_steps_in_reverse_once() {
    let def = flow();
    for failing in 0..STEPS.len() {
        let mut t = SagaTest::new(&def).given_started(order());
        for step in &STEPS[..failing] {
            t.when_reply(step, json!({}));
        }
        t.when_reply_failed(STEPS[failing], "refused");
        let expected: Vec<&str> = STEPS[..failing].iter().rev().copied().collect();
        // one at a time: answer each compensation as it comes
        for step in &expected {
            t.when_compensated(step);
        }
        t.then_compensations(&expected)
            .then_status(&SagaStatus::Compensated);
        // replies again change nothing
        for step in &expected {
            t.when_compensated(step);
            assert!(t.last_ignored().is_some());
        }
        t.then_compensations(&expected);
    }
}

#[test]
fn timeout_at_each_step_compensates_it_too() {
    let def = flow();
    for timing_out in 0..STEPS.len() {
        let mut t = SagaTest::new(&def).given_started(order());
        for step in &STEPS[..timing_out] {
            t.when_reply(step, json!({}));
        }
        t.advance(T);
        let expected: Vec<&str> = STEPS[..=timing_out].iter().rev().copied().collect();
        for step in &expected {
            t.when_compensated(step);
        }
        t.then_compensations(&expected)
            .then_status(&SagaStatus::Compensated);
        let actions = t.commands().iter().filter(|c| c.kind == Action).count();
        assert_eq!(
            actions,
            timing_out + 1,
            "no step started after compensation began"
        );
    }
}

#[test]
fn late_success_of_a_timed_out_step_is_compensated_not_continued() {
    let def = flow();
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({})).advance(T);
    // charge_payment timed out: compensation of charge_payment issued first
    t.then_compensations(&["charge_payment"]);
    t.when_reply_at("charge_payment", 1, Action, Outcome::success(json!({})));
    assert!(
        t.state()
            .step("charge_payment")
            .is_some_and(|s| s.succeeded_late)
    );
    t.when_compensated("charge_payment")
        .when_compensated("reserve_stock");
    t.then_status(&SagaStatus::Compensated)
        .then_compensations(&["charge_payment", "reserve_stock"]);
    assert!(!t.commands().iter().any(|c| c.step == "schedule_shipment"));
}

#[test]
fn late_success_before_its_compensation_turn() {
    // a parallel group: b times out, a fails; b's late success arrives while waiting
    let def = Saga::<Order>::define("p", 1)
        .step("first", |s| {
            s.invoke(|_| Ok(Command::from_json("t", "x", json!(1))))
                .compensate(|_| Ok(Command::from_json("t", "undo", json!(1))))
                .timeout(T)
        })
        .parallel(|p| {
            p.step("a", |s| {
                s.invoke(|_| Ok(Command::from_json("t", "a", json!(1))))
                    .compensate(|_| Ok(Command::from_json("t", "undo", json!(1))))
                    .timeout(T)
            })
            .step("b", |s| {
                s.invoke(|_| Ok(Command::from_json("t", "b", json!(1))))
                    .compensate(|_| Ok(Command::from_json("t", "undo", json!(1))))
                    .timeout(Duration::from_secs(10))
            })
        })
        .build()
        .expect("valid");
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("first", json!({}));
    t.advance(Duration::from_secs(10)); // b times out, retries none: compensation begins, a in flight
    t.then_status(&SagaStatus::Compensating)
        .then_compensations(&[]);
    t.when_reply_failed("a", "no"); // a failed definitively: not compensated
    t.then_compensations(&["b"]);
    t.when_compensated("b").when_compensated("first");
    t.then_status(&SagaStatus::Compensated)
        .then_compensations(&["b", "first"]);
}

fn cmd(
    name: &'static str,
) -> impl Fn(&Order) -> Result<Command, eventfold_saga::StepError> + Send + Sync + 'static {
    move |_| Ok(Command::from_json("t", name, json!({})))
}

#[test]
fn parallel_group_with_one_failing_branch_awaits_siblings_then_unwinds() {
    let def = Saga::<Order>::define("fork", 1)
        .step("reserve_stock", |s| {
            s.invoke(cmd("reserve"))
                .compensate(cmd("release"))
                .timeout(T)
        })
        .parallel(|p| {
            p.step("charge_payment", |s| {
                s.invoke(cmd("charge")).compensate(cmd("refund")).timeout(T)
            })
            .step("book_courier", |s| {
                s.invoke(cmd("book")).compensate(cmd("unbook")).timeout(T)
            })
            .step("reserve_credit", |s| {
                s.invoke(cmd("credit"))
                    .compensate(cmd("uncredit"))
                    .timeout(T)
            })
        })
        .step("confirm", |s| s.invoke(cmd("confirm")).timeout(T))
        .build()
        .expect("valid");
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({}));
    assert_eq!(t.commands().len(), 4, "the three branches start together");
    t.when_reply("charge_payment", json!({}));
    t.when_reply_failed("book_courier", "no courier");
    t.then_compensations(&[]); // reserve_credit still in flight
    t.when_reply("reserve_credit", json!({})); // success after compensation began: compensated
    t.then_compensations(&["reserve_credit"]);
    t.when_compensated("reserve_credit")
        .when_compensated("charge_payment")
        .when_compensated("reserve_stock");
    t.then_status(&SagaStatus::Compensated)
        .then_compensations(&["reserve_credit", "charge_payment", "reserve_stock"]);
    assert!(!t.commands().iter().any(|c| c.step == "confirm"));
}

fn pivot_flow() -> SagaDefinition<Order> {
    Saga::<Order>::define("order.pivot", 1)
        .step("reserve_stock", |s| {
            s.invoke(cmd("reserve"))
                .compensate(cmd("release"))
                .timeout(T)
        })
        .pivot("charge_payment", |s| {
            s.invoke(cmd("charge"))
                .timeout(T)
                .retry(RetryPolicy::fixed(2, Duration::from_secs(1)))
        })
        .step("schedule_shipment", |s| {
            s.invoke(cmd("ship"))
                .timeout(T)
                .retry(RetryPolicy::exponential(
                    2,
                    Duration::from_secs(1),
                    2.0,
                    Duration::from_secs(8),
                ))
        })
        .build()
        .expect("valid")
}

#[test]
fn pivot_failure_compensates_before_it_success_goes_forward_only() {
    let def = pivot_flow();
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({}))
        .when_reply_failed("charge_payment", "declined");
    t.when_compensated("reserve_stock");
    t.then_status(&SagaStatus::Compensated)
        .then_compensations(&["reserve_stock"]);

    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({}))
        .when_reply("charge_payment", json!({}));
    assert!(t.state().pivot_passed);
    // after the pivot: failures and timeouts are retried beyond max_attempts, backoff capped
    for _ in 0..6 {
        t.when_reply_failed("schedule_shipment", "carrier down");
        t.advance(Duration::from_secs(8));
    }
    t.advance(T).advance(Duration::from_secs(8));
    t.then_status(&SagaStatus::Running).then_compensations(&[]);
    t.when_reply("schedule_shipment", json!({}));
    t.then_status(&SagaStatus::Completed);
    assert!(
        t.state()
            .step("schedule_shipment")
            .is_some_and(|s| s.attempt >= 8)
    );
}

#[test]
fn retries_with_backoff_then_compensation() {
    let def = pivot_flow();
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({}));
    t.when_reply_outcome("charge_payment", Outcome::retryable("busy"));
    assert_eq!(
        t.pending_timers()
            .iter()
            .filter(|t| t.key.kind == TimerKind::RetryBackoff)
            .count(),
        1
    );
    t.advance(Duration::from_secs(1));
    assert_eq!(t.state().step("charge_payment").map(|s| s.attempt), Some(2));
    assert_eq!(
        t.commands()[2].request_key,
        t.commands()[1].request_key,
        "same request key for every attempt"
    );
    t.advance(T); // attempt 2 times out: retries exhausted
    t.then_status(&SagaStatus::Compensating)
        .then_compensations(&["reserve_stock"]);
}

#[test]
fn compensation_failure_parks_then_operator_retry_compensates() {
    let def = Saga::<Order>::define("park", 1)
        .step("reserve_stock", |s| {
            s.invoke(cmd("reserve"))
                .compensate(cmd("release"))
                .timeout(T)
                .compensation_retry(RetryPolicy::fixed(2, Duration::from_secs(5)))
        })
        .step("charge_payment", |s| s.invoke(cmd("charge")).timeout(T))
        .build()
        .expect("valid");
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({}))
        .when_reply_failed("charge_payment", "declined");
    t.when_compensation_failed("reserve_stock", "inventory down");
    t.then_status(&SagaStatus::Compensating);
    t.advance(Duration::from_secs(5));
    t.when_compensation_failed("reserve_stock", "inventory still down");
    t.then_status(&SagaStatus::CompensationFailed {
        step: "reserve_stock".into(),
        error: "inventory still down".into(),
    });
    t.advance(Duration::from_secs(3600)); // parked: nothing fires
    assert!(t.status().is_parked());
    t.when_retry_parked();
    t.then_status(&SagaStatus::Compensating);
    t.when_compensated("reserve_stock");
    t.then_status(&SagaStatus::Compensated);
    let attempts: Vec<u32> = t
        .commands()
        .iter()
        .filter(|c| c.kind == Compensation)
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    t.when_retry_parked();
    assert_eq!(
        t.last_ignored(),
        Some(&Ignored::Finished {
            status: "compensated"
        })
    );
}

#[test]
fn local_steps_and_local_compensation() {
    let def = Saga::<Order>::define("local", 1)
        .step("note", |s| {
            s.local(|o: &mut Order| {
                o.notes.push("noted".into());
                Ok(())
            })
            .compensate_local(|o: &mut Order| {
                o.notes.push("unnoted".into());
                Ok(())
            })
        })
        .step("charge_payment", |s| s.invoke(cmd("charge")).timeout(T))
        .build()
        .expect("valid");
    let mut t = SagaTest::new(&def).given_started(order());
    assert_eq!(t.data().notes, vec!["noted"]);
    t.when_reply_failed("charge_payment", "no");
    t.then_status(&SagaStatus::Compensated)
        .then_compensations(&["note"]);
    assert_eq!(t.data().notes, vec!["noted", "unnoted"]);
}

#[test]
fn stale_and_duplicate_replies_and_timers_are_ignored() {
    let def = flow();
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply_at("reserve_stock", 2, Action, Outcome::success(json!({})));
    assert!(matches!(t.last_ignored(), Some(Ignored::StaleReply { .. })));
    t.when_reply_at("charge_payment", 1, Action, Outcome::success(json!({})));
    assert!(
        matches!(t.last_ignored(), Some(Ignored::StaleReply { .. })),
        "not started yet"
    );
    t.when_reply_at(
        "reserve_stock",
        1,
        Compensation,
        Outcome::success(json!({})),
    );
    assert!(t.last_ignored().is_some());
    t.when_reply("reserve_stock", json!({}));
    let len = t.history().len();
    t.when_reply("reserve_stock", json!({})); // duplicate
    t.when_reply_failed("reserve_stock", "late failure");
    t.when_timer("reserve_stock", 1, TimerKind::Timeout); // timer after the reply
    t.when_timer("charge_payment", 1, TimerKind::RetryBackoff);
    t.when_timer("charge_payment", 7, TimerKind::Timeout);
    assert!(matches!(t.last_ignored(), Some(Ignored::StaleTimer(_))));
    t.when(Input::RetryParked);
    assert_eq!(t.last_ignored(), Some(&Ignored::NotParked));
    assert_eq!(t.history().len(), len, "nothing changed");
    t.when(Input::Start {
        saga_id: uuid::Uuid::nil(),
        correlation_id: uuid::Uuid::nil(),
        data: order(),
    });
    assert_eq!(t.last_ignored(), Some(&Ignored::AlreadyStarted));
}

#[test]
fn build_validates() {
    let err = |b: eventfold_saga::SagaBuilder<Order>| b.build().expect_err("invalid");
    assert_eq!(
        err(Saga::define("x", 1)),
        DefinitionError::NoSteps {
            saga_type: "x".into()
        }
    );
    assert_eq!(
        err(Saga::define("x", 1)
            .step("a", |s| s.invoke(cmd("a")))
            .step("a", |s| s.invoke(cmd("a")))),
        DefinitionError::DuplicateStep {
            saga_type: "x".into(),
            step: "a".into()
        }
    );
    assert_eq!(
        err(Saga::define("x", 1).step("", |s| s.invoke(cmd("a")))),
        DefinitionError::EmptyStepName {
            saga_type: "x".into()
        }
    );
    assert_eq!(
        err(Saga::define("x", 1).step("a", |s| s)),
        DefinitionError::MissingAction {
            saga_type: "x".into(),
            step: "a".into()
        }
    );
    assert_eq!(
        err(Saga::define("x", 1)
            .pivot("p", |s| s.invoke(cmd("p")))
            .step("b", |s| s.invoke(cmd("b")).compensate(cmd("u")))),
        DefinitionError::CompensationAfterPivot {
            saga_type: "x".into(),
            step: "b".into()
        }
    );
    assert_eq!(
        err(Saga::define("x", 1)
            .pivot("p", |s| s.invoke(cmd("p")))
            .pivot("q", |s| s.invoke(cmd("q")))),
        DefinitionError::SecondPivot {
            saga_type: "x".into(),
            step: "q".into()
        }
    );
    assert_eq!(
        err(Saga::define("x", 1).parallel(|p| p)),
        DefinitionError::EmptyParallelGroup {
            saga_type: "x".into(),
            group: 1
        }
    );
}

#[test]
fn saga_events_round_trip_through_the_event_codec() {
    use eventfold_core::Event;
    let def = flow();
    let mut t = SagaTest::new(&def).given_started(order());
    t.when_reply("reserve_stock", json!({}))
        .advance(T)
        .when_compensated("charge_payment");
    for event in t.history() {
        let bytes = Event::encode(event).expect("encode");
        let back = <eventfold_saga::SagaEvent as Event>::decode(event.event_type(), &bytes)
            .expect("decode");
        assert_eq!(&back, event);
    }
}
