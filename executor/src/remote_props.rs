//! Property tests of how remote handlers' answers are read (run by `cargo test`, 256 cases
//! each; more with `PROPTEST_CASES`): whatever a handler answers, the attempt gets an
//! outcome, never a panic; error text from an HTTP body is bounded; a Retry-After is capped.

use bytes::Bytes;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{StatusCode, Uri};
use proptest::prelude::*;
use tarefa_proto::{ExecuteOutcome, ExecuteResponse};

use super::{ERROR_BODY_CHARS, MAX_RETRY_AFTER, http_outcome, outcome_of};
use crate::handler::HandlerError;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_grpc_answer_is_an_outcome(
        outcome in any::<i32>(),
        result in prop::collection::vec(any::<u8>(), 0..256),
        error in "\\PC{0,100}",
        retry_after_ms in any::<u64>(),
    ) {
        let response = ExecuteResponse {
            outcome,
            result: result.clone(),
            error,
            retry_after_ms,
        };
        match (ExecuteOutcome::try_from(outcome), outcome_of("grpcs://h:1", response)) {
            (Ok(ExecuteOutcome::Success | ExecuteOutcome::Unspecified), Ok(got)) => {
                prop_assert_eq!(got, result)
            }
            (Ok(ExecuteOutcome::Fail), Err(HandlerError::Permanent(_))) => {}
            (Ok(ExecuteOutcome::Retry), Err(HandlerError::Retry { .. })) => {}
            // An outcome this executor does not know is retried, never taken as success.
            (Err(_), Err(HandlerError::Retry { .. })) => {}
            (known, got) => prop_assert!(false, "{:?} gave {:?}", known, got),
        }
    }

    #[test]
    fn any_http_answer_is_an_outcome(
        status in 100u16..600,
        retry_after in "\\PC{0,24}",
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let Ok(status) = StatusCode::from_u16(status) else { return Ok(()) };
        let mut headers = hyper::HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&retry_after) {
            headers.insert(RETRY_AFTER, value);
        }
        let target: Uri = "http://h/p".parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        match http_outcome(&target, status, &headers, Bytes::from(body.clone())) {
            Ok(got) => {
                prop_assert!(status.is_success());
                prop_assert_eq!(got, body);
            }
            Err(HandlerError::Retry { message, after }) => {
                prop_assert!(!status.is_success());
                prop_assert!(message.chars().count() <= ERROR_BODY_CHARS + 200);
                prop_assert!(after.is_none_or(|a| a <= MAX_RETRY_AFTER));
            }
            Err(HandlerError::Permanent(message)) => {
                prop_assert!(!status.is_success());
                prop_assert!(message.chars().count() <= ERROR_BODY_CHARS + 200);
            }
        }
    }
}
