//! Property tests of request validation (run by `cargo test`, 256 cases each; more with
//! `PROPTEST_CASES`): whatever a client sends, validation answers a task or
//! INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming a field, never a panic or INTERNAL; and
//! whatever a client puts in a task id or a page token is checked before Redis sees it.

use std::collections::HashMap;

use proptest::prelude::*;
use tarefa_proto as pb;

use super::{new_task, page_offset, task_id};
use crate::config::Config;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Mostly plausible, sometimes hostile text.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{0,{max}}}"))
            .expect("a valid regex"),
        proptest::string::string_regex(&format!("\\PC{{0,{max}}}")).expect("a valid regex"),
        proptest::string::string_regex(&format!(".{{0,{max}}}")).expect("a valid regex"),
    ]
}

fn request() -> impl Strategy<Value = pb::SubmitTaskRequest> {
    (
        (
            text(80),
            text(140),
            prop::collection::vec(any::<u8>(), 0..4096),
            text(40),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<i32>(),
            any::<u64>(),
        ),
        proptest::option::of((any::<u64>(), any::<u64>(), any::<f64>())),
        prop::collection::hash_map(text(40), text(200), 0..80),
        text(80),
    )
        .prop_map(
            |(
                (queue, task_type, payload, content_type),
                (delay_ms, run_at_ms, max_attempts, timeout_ms, priority, result_ttl_ms),
                backoff,
                headers,
                idempotency_key,
            )| pb::SubmitTaskRequest {
                queue,
                task_type,
                payload,
                content_type,
                delay_ms,
                run_at_ms,
                max_attempts,
                backoff: backoff.map(|(initial_ms, max_ms, multiplier)| pb::RetryBackoff {
                    initial_ms,
                    max_ms,
                    multiplier,
                }),
                timeout_ms,
                idempotency_key,
                priority,
                headers: headers.into_iter().collect::<HashMap<_, _>>(),
                result_ttl_ms,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn submits_are_validated_never_panic_never_internal(
        request in request(),
        index in proptest::option::of(0usize..1000),
    ) {
        let mut config = Config::for_redis("redis://127.0.0.1:1");
        config.max_payload_bytes = 1024;
        match new_task(request, &config, index, String::new()) {
            Ok(task) => {
                prop_assert!(!task.task_type.is_empty());
                prop_assert!(task.payload.len() <= config.max_payload_bytes);
                prop_assert!(task.max_attempts >= 1);
            }
            Err(error) => {
                let code = error.code();
                prop_assert!(
                    matches!(code, tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted),
                    "{:?}: {}", code, error
                );
                if let Some(i) = index {
                    let prefix = format!("tasks[{i}].");
                    prop_assert!(error.to_string().contains(&prefix), "{}", error);
                }
            }
        }
    }

    #[test]
    fn task_ids_are_checked_before_redis(text in text(200), long in 0usize..3) {
        let config = Config::for_redis("redis://127.0.0.1:1");
        let text = match long {
            0 => text,
            1 => format!("{text}:01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            _ => format!("{}:01ARZ3NDEKTSV4RRFFQ69G5FAV", "q".repeat(65 + text.len())),
        };
        if let Ok(id) = task_id(&text, &config) {
            prop_assert!(id.queue().len() <= config.max_queue_name_len);
        }
    }

    #[test]
    fn page_tokens_are_small_offsets(token in text(30), number in any::<u64>()) {
        for token in [token, number.to_string()] {
            if let Ok(offset) = page_offset(&token) {
                prop_assert!(offset <= 1 << 53);
                prop_assert!(offset.checked_add(1000).is_some());
            }
        }
    }
}
