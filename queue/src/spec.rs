//! The part of a task that never changes after submit (handler name, payload, content type,
//! timeout, backoff, headers, traceparent), packed into the record's one `spec` field.
//!
//! The scripts never look inside it: they store it at submit and hand it back at claim. One
//! field instead of seven keeps the record's hash small (every `HSET`/`HMGET` on it scans its
//! fields) and moves six fewer values per task through Lua, which is most of what a script
//! call costs Redis.
//!
//! Layout: a version byte (`1`), then six length-prefixed fields (LEB128 length, then bytes):
//! type, content type, timeout (decimal ms), backoff ([`Backoff::encode`], empty for the
//! default), headers (JSON, empty for none), traceparent; the payload is the rest.

use std::collections::HashMap;
use std::time::Duration;

use crate::task::{Backoff, NewTask};

const VERSION: u8 = 1;

/// A decoded spec.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) task_type: String,
    pub(crate) content_type: String,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) traceparent: String,
    pub(crate) payload: Vec<u8>,
}

/// Packs `task`'s immutable fields.
pub(crate) fn encode(task: &NewTask) -> Vec<u8> {
    let headers = if task.headers.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&task.headers).unwrap_or_default()
    };
    let timeout = (task.timeout.as_millis() as u64).to_string();
    let backoff = task.backoff.map(|b| b.encode()).unwrap_or_default();
    let fields: [&[u8]; 6] = [
        task.task_type.as_bytes(),
        task.content_type.as_bytes(),
        timeout.as_bytes(),
        backoff.as_bytes(),
        headers.as_bytes(),
        task.traceparent.as_bytes(),
    ];
    let size = 1 + fields.iter().map(|f| f.len() + 5).sum::<usize>() + task.payload.len();
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    for field in fields {
        put_length(&mut out, field.len());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&task.payload);
    out
}

/// Unpacks a spec; the error says what is wrong with it.
pub(crate) fn decode(bytes: &[u8]) -> Result<Spec, String> {
    let (&version, mut rest) = bytes.split_first().ok_or("the spec is empty")?;
    if version != VERSION {
        return Err(format!("spec version {version} is unknown"));
    }
    let mut text = |name: &str| -> Result<String, String> {
        let (length, after) = take_length(rest).ok_or_else(|| format!("{name}: bad length"))?;
        if after.len() < length {
            return Err(format!("{name}: truncated"));
        }
        let (field, after) = after.split_at(length);
        rest = after;
        String::from_utf8(field.to_vec()).map_err(|_| format!("{name}: not UTF-8"))
    };
    let task_type = text("type")?;
    let content_type = text("content type")?;
    let timeout = text("timeout")?;
    let backoff = text("backoff")?;
    let headers = text("headers")?;
    let traceparent = text("traceparent")?;
    let timeout_ms: u64 = timeout
        .parse()
        .map_err(|_| format!("timeout is {timeout:?}"))?;
    Ok(Spec {
        task_type,
        content_type,
        timeout: Duration::from_millis(timeout_ms),
        backoff: (!backoff.is_empty()).then(|| Backoff::decode(&backoff)),
        headers: if headers.is_empty() {
            HashMap::new()
        } else {
            serde_json::from_str(&headers).map_err(|e| format!("headers: {e}"))?
        },
        traceparent,
        payload: rest.to_vec(),
    })
}

/// The length of a packed spec's head: everything before the payload (what `spec_head` in
/// common.lua keeps for list pages). `None` when the spec is damaged.
pub(crate) fn head_len(bytes: &[u8]) -> Option<usize> {
    let mut rest = bytes.get(1..)?;
    for _ in 0..6 {
        let (length, after) = take_length(rest)?;
        rest = after.get(length..)?;
    }
    Some(bytes.len() - rest.len())
}

/// Appends a LEB128 length.
pub(crate) fn put_length(out: &mut Vec<u8>, mut length: usize) {
    while length >= 0x80 {
        out.push((length as u8 & 0x7f) | 0x80);
        length >>= 7;
    }
    out.push(length as u8);
}

/// Reads a LEB128 length; `None` when it is cut short or absurd (over 2^35).
pub(crate) fn take_length(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut length = 0usize;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        length |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((length, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskId;

    fn task() -> NewTask {
        NewTask {
            id: TaskId::from_parts("mail", "01J0000000000000000000000"),
            task_type: "send_email".to_owned(),
            payload: vec![0, 1, 2, 255, b'{'],
            content_type: "application/octet-stream".to_owned(),
            run_at_ms: 0,
            delay_ms: 0,
            max_attempts: 3,
            backoff: Some(Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(1000),
                multiplier: 3.0,
            }),
            timeout: Duration::from_millis(1234),
            result_ttl: Duration::from_secs(60),
            priority: 0,
            headers: HashMap::from([("tenant".to_owned(), "é".repeat(100))]),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let task = task();
        let spec = decode(&encode(&task)).expect("decodes");
        assert_eq!(spec.task_type, task.task_type);
        assert_eq!(spec.content_type, task.content_type);
        assert_eq!(spec.timeout, task.timeout);
        assert_eq!(spec.backoff, task.backoff);
        assert_eq!(spec.headers, task.headers);
        assert_eq!(spec.traceparent, task.traceparent);
        assert_eq!(spec.payload, task.payload);
    }

    #[test]
    fn defaults_and_empty_payload_round_trip() {
        let mut task = task();
        task.backoff = None;
        task.headers.clear();
        task.payload.clear();
        task.traceparent.clear();
        let spec = decode(&encode(&task)).expect("decodes");
        assert_eq!((spec.backoff, spec.headers.len()), (None, 0));
        assert!(spec.payload.is_empty() && spec.traceparent.is_empty());
    }

    #[test]
    fn damaged_specs_are_errors_not_panics() {
        let bytes = encode(&task());
        for cut in 0..40 {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[2]).is_err());
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn the_head_is_everything_before_the_payload() {
        let task = task();
        let bytes = encode(&task);
        let head = head_len(&bytes).expect("a head");
        assert_eq!(&bytes[head..], task.payload.as_slice());
        let alone = decode(&bytes[..head]).expect("a head decodes alone");
        assert!(alone.payload.is_empty());
        assert_eq!(alone.task_type, task.task_type);
        for cut in 0..head {
            assert_eq!(head_len(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}

#[cfg(test)]
#[path = "spec_props.rs"]
mod props;
