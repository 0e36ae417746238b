//! What a relay relies on ([`OutboxRelayStore`]): claims of the first due row of each key, keys
//! in flight, failures with a retry time, parked rows (dead letters) retried or skipped, slot
//! leases split between relays and fencing completion.
//!
//! The relay's own tests (`eventfold-outbox` publishing to a broker) cannot live in this crate,
//! which the outbox crate depends on: they are in the workspace's `tests/relay.rs`, one test
//! module per backend.

use std::time::Duration;

use eventfold_core::{NewEvent, StreamId};
use uuid::Uuid;

use super::{added, stream};
use crate::error::ExpectedVersion;
use crate::outbox::{OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting};

/// A claim holds at most the first due row of each key, in `seq` order; a failed row delays its
/// key, a parked row blocks its key until it is retried (same place) or skipped.
pub async fn relay_claims_one_due_row_per_key_and_parks_what_fails<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let owner = Uuid::now_v7();
    let ttl = std::time::Duration::from_secs(30);
    store
        .append(
            &stream("a"),
            ExpectedVersion::NoStream,
            vec![added(1), added(2), added(3)],
        )
        .await
        .expect("append a");
    store
        .append(
            &stream("b"),
            ExpectedVersion::NoStream,
            vec![added(4), added(5)],
        )
        .await
        .expect("append b");
    let slots = store.lease_slots(owner, ttl).await.expect("lease");
    assert_eq!(
        slots.len(),
        OUTBOX_SLOTS as usize,
        "a lone relay leases every slot"
    );
    let versions = |rows: &[crate::OutboxRow]| {
        rows.iter()
            .map(|r| {
                format!(
                    "{}{}",
                    r.message.key,
                    r.message.headers[eventfold_core::outbox::headers::STREAM_VERSION]
                )
            })
            .collect::<Vec<_>>()
    };
    let first = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(
        versions(&first),
        vec!["a1", "b1"],
        "one row per key, oldest first"
    );
    let seqs: Vec<u64> = first.iter().map(|r| r.seq).collect();
    assert_eq!(
        store.complete_outbox(owner, &seqs).await.expect("complete"),
        2
    );

    let second = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&second), vec!["a2", "b2"]);
    // Keys in flight (a row claimed, still being published): they wait, and their rows do
    // not take room in the window (of 1 row here: b2, not a2).
    let (key_a, key_b) = (
        second[0].message.key.as_str(),
        second[1].message.key.as_str(),
    );
    let beside = store
        .claim_outbox(&slots, 1, &[key_a])
        .await
        .expect("claim beside a row in flight");
    assert_eq!(versions(&beside), vec!["b2"], "a3 waits for a2 in flight");
    // Keys in flight that have no row left change nothing.
    let gone = store
        .claim_outbox(&slots, 1, &["no such key", "nor this one"])
        .await
        .expect("claim");
    assert_eq!(versions(&gone), vec!["a2"], "at most `limit` rows");
    assert!(
        store
            .claim_outbox(&slots, 10, &[key_a, key_b])
            .await
            .expect("claim")
            .is_empty(),
        "every key has a row in flight"
    );
    // a2 fails: key a waits (b goes on); its later row a3 is not claimed either.
    store
        .fail_outbox(
            second[0].seq,
            "broker timeout",
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("fail");
    let third = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&third), vec!["b2"]);
    store
        .complete_outbox(owner, &[third[0].seq])
        .await
        .expect("complete");
    let failed = &store.read_outbox(10).await.expect("read")[0];
    assert_eq!(
        (failed.attempts, failed.last_error.as_deref()),
        (1, Some("broker timeout"))
    );
    assert!(failed.next_attempt_at.is_some());

    // Parked: key a is blocked until an operator acts.
    store
        .park_outbox(second[0].seq, "message too large")
        .await
        .expect("park");
    assert!(
        store
            .claim_outbox(&slots, 10, &[])
            .await
            .expect("claim")
            .is_empty()
    );
    let dead = store.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].row.seq, dead[0].error.as_str()),
        (second[0].seq, "message too large")
    );
    assert_eq!(store.outbox_status().await.expect("status").dead_letters, 1);

    // Retried: it comes back first, in its place.
    assert!(store.retry_dead_letter(second[0].seq).await.expect("retry"));
    assert!(
        !store
            .retry_dead_letter(second[0].seq)
            .await
            .expect("retry again")
    );
    let again = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&again), vec!["a2"]);
    assert_eq!((again[0].seq, again[0].attempts), (second[0].seq, 0));

    // Skipped: the key flows on with its next row.
    store
        .park_outbox(again[0].seq, "still too large")
        .await
        .expect("park");
    assert!(store.skip_dead_letter(again[0].seq).await.expect("skip"));
    let last = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&last), vec!["a3"]);
    assert!(store.dead_letters(10).await.expect("dead").is_empty());
}

/// Live relays split the slots between them; a relay that leaves (or dies) gives its slots to
/// the others; completion only deletes rows of slots the relay still leases.
pub async fn relay_leases_split_the_slots_and_fence_completion<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let ttl = std::time::Duration::from_secs(30);
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        store.lease_slots(one, ttl).await.expect("lease").len(),
        OUTBOX_SLOTS as usize
    );
    assert!(
        store.lease_slots(two, ttl).await.expect("lease").is_empty(),
        "all slots are taken"
    );
    let kept = store.lease_slots(one, ttl).await.expect("lease");
    assert_eq!(
        kept.len(),
        OUTBOX_SLOTS as usize / 2,
        "two live relays: half each"
    );
    let taken = store.lease_slots(two, ttl).await.expect("lease");
    assert_eq!(taken.len(), OUTBOX_SLOTS as usize / 2);
    assert!(
        kept.iter().all(|s| !taken.contains(s)),
        "no slot has two owners"
    );

    store
        .append(&stream("fenced"), ExpectedVersion::NoStream, vec![added(1)])
        .await
        .expect("append");
    let row = store.read_outbox(1).await.expect("read").remove(0);
    let (holder, other) = if kept.contains(&row.slot) {
        (one, two)
    } else {
        (two, one)
    };
    assert_eq!(
        store
            .complete_outbox(other, &[row.seq])
            .await
            .expect("complete"),
        0,
        "not its slot"
    );
    assert_eq!(store.outbox_status().await.expect("status").pending, 1);

    store.release_slots(holder).await.expect("release");
    let all = store.lease_slots(other, ttl).await.expect("lease");
    assert_eq!(
        all.len(),
        OUTBOX_SLOTS as usize,
        "the remaining relay takes over"
    );
    assert_eq!(
        store
            .complete_outbox(other, &[row.seq])
            .await
            .expect("complete"),
        1
    );
    assert_eq!(store.outbox_status().await.expect("status").pending, 0);

    // A lease that expired fences too, even with no other relay around: the row stays.
    store
        .append(&stream("fenced"), ExpectedVersion::Exact(1), vec![added(2)])
        .await
        .expect("append");
    let row = store.read_outbox(1).await.expect("read").remove(0);
    store
        .lease_slots(other, std::time::Duration::from_millis(100))
        .await
        .expect("lease briefly");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        store
            .complete_outbox(other, &[row.seq])
            .await
            .expect("complete"),
        0,
        "the lease expired"
    );
    assert_eq!(store.outbox_status().await.expect("status").pending, 1);
}

/// An `order.noted` event of `size` bytes, on the relay tests' `order-<key>` streams.
fn event(size: usize) -> NewEvent {
    NewEvent::raw("order.noted", 1, vec![b'x'; size])
}

/// A key waiting for a retry (backoff) with a long queue is kept out of the claim's window too:
/// its later rows are never claimed before the failed one, and the other keys keep flowing.
pub async fn retrying_key_does_not_starve_others<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let slow = StreamId::new("order", "slow").expect("stream id");
    store
        .append(
            &slow,
            ExpectedVersion::NoStream,
            (0..301).map(|_| event(10)).collect(),
        )
        .await
        .expect("append");
    for i in 0..20 {
        let stream = StreamId::new("order", format!("o{i}")).expect("stream id");
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event(10), event(10)],
            )
            .await
            .expect("append");
    }
    let owner = Uuid::now_v7();
    let slots = store
        .lease_slots(owner, Duration::from_secs(30))
        .await
        .expect("lease");
    let first = store.claim_outbox(&slots, 64, &[]).await.expect("claim");
    assert_eq!(first.len(), 1, "the window holds only the slow key's rows");
    assert_eq!(first[0].message.key, "slow");
    store
        .fail_outbox(first[0].seq, "broker timeout", Duration::from_secs(60))
        .await
        .expect("fail");
    let mut others = 0;
    for _ in 0..5 {
        let rows = store.claim_outbox(&slots, 64, &[]).await.expect("claim");
        assert!(
            rows.iter().all(|r| r.message.key != "slow"),
            "no row of a key waiting for its retry is claimed"
        );
        others += rows.len();
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        store.complete_outbox(owner, &seqs).await.expect("complete");
    }
    assert_eq!(others, 40, "the other keys delivered both of their rows");
    assert_eq!(store.outbox_status().await.expect("status").pending, 301);
}
