//! Property tests of the packed spec (run by `cargo test`, 256 cases each; more with
//! `PROPTEST_CASES`): whatever bytes Redis hands back, decoding answers an error or a spec,
//! never a panic; and every task the scheduler can submit round-trips.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::{decode, encode};
use crate::task::{Backoff, NewTask, TaskId};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn backoff() -> impl Strategy<Value = Option<Backoff>> {
    proptest::option::of(
        (
            0u64..1_000_000,
            0u64..10_000_000,
            prop::sample::select(vec![1.0, 1.5, 2.0, 3.0, 10.0]),
        )
            .prop_map(|(initial, max, multiplier)| Backoff {
                initial: Duration::from_millis(initial),
                max: Duration::from_millis(max),
                multiplier,
            }),
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn versioned_garbage_decodes_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut spec = vec![1u8];
        spec.extend(bytes);
        let _ = decode(&spec);
    }

    #[test]
    fn every_task_round_trips(
        task_type in "[A-Za-z0-9_.:-]{1,128}",
        content_type in "\\PC{0,40}",
        timeout_ms in 0u64..=365 * 24 * 3600 * 1000,
        backoff in backoff(),
        headers in prop::collection::hash_map("\\PC{0,20}", "\\PC{0,40}", 0..8),
        traceparent in "[0-9a-f-]{0,55}",
        payload in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let task = NewTask {
            id: TaskId::from_parts("q", "01J0000000000000000000000"),
            task_type,
            payload,
            content_type,
            run_at_ms: 0,
            delay_ms: 0,
            max_attempts: 3,
            backoff,
            timeout: Duration::from_millis(timeout_ms),
            result_ttl: Duration::from_secs(60),
            priority: 0,
            headers: headers.into_iter().collect::<HashMap<_, _>>(),
            traceparent,
            idempotency_key: String::new(),
        };
        let spec = decode(&encode(&task)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&spec.task_type, &task.task_type);
        prop_assert_eq!(&spec.content_type, &task.content_type);
        prop_assert_eq!(spec.timeout, task.timeout);
        prop_assert_eq!(&spec.backoff, &task.backoff);
        prop_assert_eq!(&spec.headers, &task.headers);
        prop_assert_eq!(&spec.traceparent, &task.traceparent);
        prop_assert_eq!(&spec.payload, &task.payload);
    }

    #[test]
    fn damaged_encodings_decode_without_panicking(
        payload in prop::collection::vec(any::<u8>(), 0..64),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let task = NewTask {
            id: TaskId::from_parts("q", "01J0000000000000000000000"),
            task_type: "t".to_owned(),
            payload,
            content_type: String::new(),
            run_at_ms: 0,
            delay_ms: 0,
            max_attempts: 1,
            backoff: None,
            timeout: Duration::from_secs(1),
            result_ttl: Duration::from_secs(1),
            priority: 0,
            headers: HashMap::from([("k".to_owned(), "v".to_owned())]),
            traceparent: String::new(),
            idempotency_key: String::new(),
        };
        let mut bytes = encode(&task);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        let cut = cut.index(bytes.len() + 1);
        let _ = decode(&bytes[..cut]);
    }
}
