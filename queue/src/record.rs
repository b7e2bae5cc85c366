//! The task record's layout in Redis (`tarefa:{queue}:t:<ulid>`, a hash): every field name and
//! state code in one place. The Lua scripts use the same names; a test below reads every script
//! and checks that each field it reads or writes on a record is one of these, and that its
//! state codes are [`TaskState`]'s. Reading a record is strict: a field that is present but
//! damaged is [`Error::Corrupt`] naming it, never a silent 0.

// Several fields are only ever read and written by the scripts: their constants document them,
// and the tests check the scripts against the list.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::HashMap;

use crate::spec;
use crate::task::{AttemptError, TaskId, TaskRecord, TaskState};
use crate::{Error, Result};

/// The immutable fields, packed by `spec.rs`.
pub(crate) const SPEC: &str = "spec";
/// The state, a [`TaskState`] code.
pub(crate) const STATE: &str = "state";
/// The attempt number users see (from 1; `RetryTask` starts it again).
pub(crate) const ATTEMPT: &str = "att";
/// The fencing token of the newest claim: only ever grows.
pub(crate) const FENCE: &str = "f";
/// The fencing token whose outcome was recorded (makes a retried write idempotent).
pub(crate) const OUTCOME_FENCE: &str = "of";
/// Deliveries without an outcome, as counted (the last allowed one counts once it runs alone).
pub(crate) const DELIVERIES: &str = "dlv";
/// The delivery number of the newest claim.
pub(crate) const DELIVERY: &str = "dn";
/// Times the task was handed back by an executor without a handler for it.
pub(crate) const NO_HANDLER: &str = "nh";
/// Attempts allowed.
pub(crate) const MAX_ATTEMPTS: &str = "max";
/// How long the finished record is kept (ms).
pub(crate) const RESULT_TTL: &str = "ttl";
/// When submitted (Unix ms, Redis clock).
pub(crate) const CREATED: &str = "ctime";
/// When due, or when queued (Unix ms).
pub(crate) const RUN_AT: &str = "rtime";
/// When the newest attempt started (Unix ms).
pub(crate) const STARTED: &str = "stime";
/// When it finished (Unix ms).
pub(crate) const FINISHED: &str = "ftime";
/// Its stream entry while waiting or running.
pub(crate) const ENTRY: &str = "entry";
/// The executor of the newest attempt.
pub(crate) const EXECUTOR: &str = "exec";
/// The result.
pub(crate) const RESULT: &str = "res";
/// The newest error.
pub(crate) const ERROR: &str = "err";
/// "1" once a cancel was asked for while running.
pub(crate) const CANCEL: &str = "cancel";
/// Progress, 0.0 to 1.0.
pub(crate) const PROGRESS: &str = "prog";
/// Progress message.
pub(crate) const PROGRESS_MESSAGE: &str = "pmsg";
/// Priority.
pub(crate) const PRIORITY: &str = "prio";
/// Idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "idem";

/// Every field of a record.
pub(crate) const FIELDS: &[&str] = &[
    SPEC,
    STATE,
    ATTEMPT,
    FENCE,
    OUTCOME_FENCE,
    DELIVERIES,
    DELIVERY,
    NO_HANDLER,
    MAX_ATTEMPTS,
    RESULT_TTL,
    CREATED,
    RUN_AT,
    STARTED,
    FINISHED,
    ENTRY,
    EXECUTOR,
    RESULT,
    ERROR,
    CANCEL,
    PROGRESS,
    PROGRESS_MESSAGE,
    PRIORITY,
    IDEMPOTENCY_KEY,
];

/// The name `get.lua` answers a finished-bucket value under, in place of a record's fields.
pub(crate) const PACKED: &str = "@fin";

/// The layout version of a finished-bucket value.
const PACKED_VERSION: u8 = b'1';

/// The bucket second of an entry-named task: its birth time in whole seconds (the entry id's
/// ms part / 1000). `finished_value` in common.lua computes the same from the id's text.
pub(crate) fn bucket_second(entry_ms: u64) -> u64 {
    entry_ms / 1000
}

/// A first-attempt success of a task born in the stream (the fast path), packed for its
/// finished bucket (`tarefa:{queue}:fin:<birth second>`, a hash of task id -> value) by the
/// executor, which knows all of it but the finish time: complete.lua writes
/// `<ftime>,` ++ this ++ the result. Layout after the comma: a version byte (`1`), then
/// length-prefixed fields (LEB128 length, then bytes, as in spec.rs): executor, outcome token,
/// start time, max attempts, result TTL, priority, idempotency key, the spec's head, the
/// spec's payload, and the result's length (its bytes follow). A list page's copy
/// (`get.lua summary`) ends after the spec's head. The task's creation time is its id's, its
/// state SUCCEEDED, its attempt 1: nothing else of a record applies to it.
pub(crate) struct Finished<'a> {
    pub(crate) executor: &'a str,
    pub(crate) fence: u64,
    pub(crate) started_ms: u64,
    pub(crate) max_attempts: u32,
    pub(crate) result_ttl_ms: &'a str,
    pub(crate) priority: &'a str,
    pub(crate) idempotency_key: &'a str,
    pub(crate) spec: &'a [u8],
    pub(crate) result_len: usize,
}

impl Finished<'_> {
    /// The packed value, less the finish time before it and the result after it.
    pub(crate) fn pack(&self) -> Vec<u8> {
        let head = spec::head_len(self.spec).unwrap_or(self.spec.len());
        let (spec_head, payload) = self.spec.split_at(head);
        let fence = self.fence.to_string();
        let started = self.started_ms.to_string();
        let max = self.max_attempts.to_string();
        let fields: [&[u8]; 9] = [
            self.executor.as_bytes(),
            fence.as_bytes(),
            started.as_bytes(),
            max.as_bytes(),
            self.result_ttl_ms.as_bytes(),
            self.priority.as_bytes(),
            self.idempotency_key.as_bytes(),
            spec_head,
            payload,
        ];
        let mut out = Vec::with_capacity(16 + fields.iter().map(|f| f.len() + 2).sum::<usize>());
        out.push(PACKED_VERSION);
        for field in fields {
            spec::put_length(&mut out, field.len());
            out.extend_from_slice(field);
        }
        spec::put_length(&mut out, self.result_len);
        out
    }
}

/// A finished-bucket value (see [`Finished`]) as a record's fields, ready for [`parse`], with
/// the time (Unix ms) its result TTL runs out: the bucket lives as long as its longest-kept
/// task, and a reader hides the others once their own TTL has passed. A list page's copy
/// (cut after the spec's head) gives no payload and no result.
pub(crate) fn unpack_finished(
    local: &str,
    value: &[u8],
) -> std::result::Result<(HashMap<String, Vec<u8>>, u64), String> {
    let comma = value
        .iter()
        .position(|&b| b == b',')
        .ok_or("no finish time")?;
    let finished = &value[..comma];
    let finished_ms: u64 = std::str::from_utf8(finished)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or("a bad finish time")?;
    let (&version, mut rest) = value[comma + 1..]
        .split_first()
        .ok_or("nothing after the finish time")?;
    if version != PACKED_VERSION {
        return Err(format!("layout version {version} is unknown"));
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(10);
    while !rest.is_empty() && parts.len() < 10 {
        let (length, after) = spec::take_length(rest).ok_or("a bad length")?;
        if parts.len() == 9 {
            // The result: the rest of the value.
            let result = after.get(..length).ok_or("the result is cut short")?;
            parts.push(result);
            break;
        }
        let field = after.get(..length).ok_or("a field is cut short")?;
        parts.push(field);
        rest = &after[length..];
    }
    if parts.len() < 8 {
        return Err(format!("{} fields of at least 8", parts.len()));
    }
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let created = crate::task::stream_id_parts(local)
        .map(|(ms, _)| ms.to_string())
        .ok_or("not named by a stream entry")?;
    let ttl_ms: u64 = std::str::from_utf8(part(4))
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(86_400_000);
    let mut spec = part(7).to_vec();
    spec.extend_from_slice(part(8));
    let mut fields: HashMap<String, Vec<u8>> = HashMap::with_capacity(13);
    let mut put = |name: &str, value: &[u8]| {
        fields.insert(name.to_owned(), value.to_vec());
    };
    put(STATE, b"4");
    put(ATTEMPT, b"1");
    put(CREATED, created.as_bytes());
    put(FINISHED, finished);
    put(EXECUTOR, part(0));
    put(OUTCOME_FENCE, part(1));
    put(STARTED, part(2));
    put(MAX_ATTEMPTS, part(3));
    put(RESULT_TTL, part(4));
    for (name, i) in [(PRIORITY, 5), (IDEMPOTENCY_KEY, 6)] {
        if !part(i).is_empty() {
            put(name, part(i));
        }
    }
    put(RESULT, part(9));
    fields.insert(SPEC.to_owned(), spec);
    Ok((fields, finished_ms.saturating_add(ttl_ms)))
}

/// The name Redis's clock (Unix ms) is answered under beside [`PACKED`]: what a finished
/// bucket's value is judged expired against (never the reader's own clock, which may be off).
pub(crate) const NOW: &str = "@now";

/// What a reader got for a task (`get.lua`, or a record's `HGETALL`) as a [`TaskRecord`]:
/// `None` for a finished-bucket value whose result TTL has run out by Redis's clock ([`NOW`],
/// answered with it): such a value stays only while a task of the same second is kept longer.
pub(crate) fn parse_stored(
    id: TaskId,
    mut fields: HashMap<String, Vec<u8>>,
    errors: Vec<String>,
) -> Result<Option<TaskRecord>> {
    if let Some(value) = fields.remove(PACKED) {
        let now = fields.remove(NOW).unwrap_or_default();
        let now_ms: u64 = std::str::from_utf8(&now)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::Corrupt(format!("task {id}: no clock read with it")))?;
        let (fields, expires_ms) = unpack_finished(id.local(), &value)
            .map_err(|e| Error::Corrupt(format!("task {id}: finished record: {e}")))?;
        if expires_ms <= now_ms {
            return Ok(None);
        }
        return parse(id, fields, Vec::new()).map(Some);
    }
    parse(id, fields, errors).map(Some)
}

/// A record read from Redis (`HGETALL`) and its errors list, as a [`TaskRecord`].
pub(crate) fn parse(
    id: TaskId,
    mut fields: HashMap<String, Vec<u8>>,
    errors: Vec<String>,
) -> Result<TaskRecord> {
    let corrupt = |field: &str, value: &str| {
        Error::Corrupt(format!("task {id}: field {field:?} is {value:?}"))
    };
    let spec_bytes = fields.remove(SPEC).unwrap_or_default();
    let spec = spec::decode(&spec_bytes).map_err(|e| Error::Corrupt(format!("task {id}: {e}")))?;
    let result = fields.remove(RESULT).unwrap_or_default();
    let mut text = |name: &str| {
        fields
            .remove(name)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    };
    let state_text = text(STATE).unwrap_or_default();
    let state = state_text
        .parse()
        .ok()
        .and_then(TaskState::from_code)
        .ok_or_else(|| corrupt(STATE, &state_text))?;
    // Absent: not yet (a time not reached, no attempt yet). Present but not a number: damage.
    let number = |name: &str, value: Option<String>| -> Result<u64> {
        match value {
            None => Ok(0),
            Some(value) => value.parse().map_err(|_| corrupt(name, &value)),
        }
    };
    let attempt = number(ATTEMPT, text(ATTEMPT))?;
    let max_attempts = number(MAX_ATTEMPTS, text(MAX_ATTEMPTS))?;
    let created_at_ms = number(CREATED, text(CREATED))?;
    let run_at_ms = number(RUN_AT, text(RUN_AT))?;
    let started_at_ms = number(STARTED, text(STARTED))?;
    let finished_at_ms = number(FINISHED, text(FINISHED))?;
    let progress = match text(PROGRESS) {
        None => 0.0,
        Some(value) => value.parse().map_err(|_| corrupt(PROGRESS, &value))?,
    };
    let priority = match text(PRIORITY) {
        None => 0,
        Some(value) => value.parse().map_err(|_| corrupt(PRIORITY, &value))?,
    };
    let errors = errors
        .into_iter()
        .map(|line| {
            let mut parts = line.splitn(3, '|');
            AttemptError {
                attempt: parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                at_ms: parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                message: parts.next().unwrap_or("").to_owned(),
            }
        })
        .collect();
    Ok(TaskRecord {
        task_type: spec.task_type,
        state,
        attempt: u32::try_from(attempt).map_err(|_| corrupt(ATTEMPT, &attempt.to_string()))?,
        max_attempts: u32::try_from(max_attempts)
            .map_err(|_| corrupt(MAX_ATTEMPTS, &max_attempts.to_string()))?,
        content_type: spec.content_type,
        last_error: text(ERROR).unwrap_or_default(),
        errors,
        created_at_ms,
        run_at_ms,
        started_at_ms,
        finished_at_ms,
        traceparent: spec.traceparent,
        headers: spec.headers,
        progress,
        progress_message: text(PROGRESS_MESSAGE).unwrap_or_default(),
        idempotency_key: text(IDEMPOTENCY_KEY).unwrap_or_default(),
        executor_id: text(EXECUTOR).unwrap_or_default(),
        priority,
        timeout_ms: spec.timeout.as_millis() as u64,
        cancel_requested: text(CANCEL).as_deref() == Some("1"),
        payload: spec.payload,
        result,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script, as the queue crate loads it.
    const SCRIPTS: &[(&str, &str)] = &[
        ("common.lua", include_str!("../scripts/common.lua")),
        ("submit.lua", include_str!("../scripts/submit.lua")),
        ("claim.lua", include_str!("../scripts/claim.lua")),
        ("complete.lua", include_str!("../scripts/complete.lua")),
        ("renew.lua", include_str!("../scripts/renew.lua")),
        ("reclaim.lua", include_str!("../scripts/reclaim.lua")),
        ("promote.lua", include_str!("../scripts/promote.lua")),
        ("cancel.lua", include_str!("../scripts/cancel.lua")),
        ("retry.lua", include_str!("../scripts/retry.lua")),
        ("progress.lua", include_str!("../scripts/progress.lua")),
        ("reconcile.lua", include_str!("../scripts/reconcile.lua")),
        ("stats.lua", include_str!("../scripts/stats.lua")),
        ("purge.lua", include_str!("../scripts/purge.lua")),
        ("alone.lua", include_str!("../scripts/alone.lua")),
        ("release.lua", include_str!("../scripts/release.lua")),
        ("group.lua", include_str!("../scripts/group.lua")),
        ("get.lua", include_str!("../scripts/get.lua")),
    ];

    /// The quoted literals of `text`, in order.
    fn literals(text: &str) -> Vec<String> {
        text.split('\'')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_owned())
            .collect()
    }

    /// The argument text of every `redis.call(...)` whose command is a hash command on a task
    /// record (its key is `key` or `record_key(...)`), with the command's name.
    fn record_calls(script: &str) -> Vec<(String, String)> {
        let mut calls = Vec::new();
        for (start, _) in script.match_indices("redis.call(") {
            let rest = &script[start + "redis.call(".len()..];
            let mut depth = 1;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &rest[..end];
            let Some(command) = literals(args).into_iter().next() else {
                continue;
            };
            if !["HSET", "HMGET", "HGET", "HDEL", "HINCRBY"].contains(&command.as_str()) {
                continue;
            }
            let after_command = args
                .split_once(',')
                .map_or("", |(_, rest)| rest)
                .trim_start();
            if after_command.starts_with("key,") || after_command.starts_with("record_key(") {
                calls.push((command, after_command.to_owned()));
            }
        }
        calls
    }

    #[test]
    fn every_field_the_scripts_touch_on_a_record_is_in_the_layout() {
        let mut seen = 0;
        for (name, script) in SCRIPTS {
            for (command, args) in record_calls(script) {
                for literal in literals(&args) {
                    // Values written beside fields: numbers, flags, the empty string.
                    if literal.is_empty() || literal.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    assert!(
                        FIELDS.contains(&literal.as_str()),
                        "{name}: {command} touches record field {literal:?}, not in record.rs"
                    );
                    seen += 1;
                }
            }
        }
        // The check above must have something to check.
        assert!(seen > 50, "only {seen} record fields found in the scripts");
    }

    #[test]
    fn the_scripts_state_codes_are_task_states() {
        let common = SCRIPTS[0].1;
        let mut states = Vec::new();
        for line in common.lines().filter(|l| l.starts_with("local S_")) {
            let (names, codes) = line
                .trim_start_matches("local ")
                .split_once('=')
                .expect("a state constant line");
            for (name, code) in names.split(',').zip(literals(codes)) {
                states.push((name.trim().to_owned(), code));
            }
        }
        let expected = [
            ("S_SCHEDULED", TaskState::Scheduled),
            ("S_QUEUED", TaskState::Queued),
            ("S_RUNNING", TaskState::Running),
            ("S_SUCCEEDED", TaskState::Succeeded),
            ("S_RETRYING", TaskState::Retrying),
            ("S_DEAD", TaskState::Dead),
            ("S_CANCELLED", TaskState::Cancelled),
        ];
        assert_eq!(states.len(), expected.len(), "{states:?}");
        for (name, state) in expected {
            let code = states
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| panic!("{name} missing from common.lua"));
            assert_eq!(code, (state as i32).to_string(), "{name}");
        }
    }

    #[test]
    fn a_finished_bucket_value_reads_as_the_record_it_replaces() {
        let task = crate::task::NewTask {
            id: TaskId::from_parts("q", "1764400000123-7"),
            task_type: "resize".to_owned(),
            payload: b"{\"w\":64}".to_vec(),
            content_type: "application/json".to_owned(),
            run_at_ms: 0,
            delay_ms: 0,
            max_attempts: 3,
            backoff: None,
            timeout: std::time::Duration::from_secs(5),
            result_ttl: std::time::Duration::from_secs(60),
            priority: 2,
            headers: HashMap::new(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            idempotency_key: "k1".to_owned(),
        };
        let spec_bytes = spec::encode(&task);
        let result = b"\"ok\"".to_vec();
        let packed = Finished {
            executor: "exec-1",
            fence: 1_764_400_000_123_007,
            started_ms: 1_764_400_000_200,
            max_attempts: 3,
            result_ttl_ms: "60000",
            priority: "2",
            idempotency_key: "k1",
            spec: &spec_bytes,
            result_len: result.len(),
        }
        .pack();
        // What complete.lua stores: the finish time, a comma, the packed value, the result.
        let mut value = b"1764400000250,".to_vec();
        value.extend_from_slice(&packed);
        value.extend_from_slice(&result);
        let id = task.id.clone();
        let stored_at = |value: &[u8], now: u64| {
            HashMap::from([
                (PACKED.to_owned(), value.to_vec()),
                (NOW.to_owned(), now.to_string().into_bytes()),
            ])
        };
        let stored = |value: &[u8]| stored_at(value, 0);
        let record = parse_stored(id.clone(), stored_at(&value, 1_764_400_000_300), Vec::new())
            .expect("parses")
            .expect("not expired");
        assert_eq!(record.state, TaskState::Succeeded);
        assert_eq!((record.attempt, record.max_attempts), (1, 3));
        assert_eq!(record.created_at_ms, 1_764_400_000_123);
        assert_eq!(record.started_at_ms, 1_764_400_000_200);
        assert_eq!(record.finished_at_ms, 1_764_400_000_250);
        assert_eq!(record.executor_id, "exec-1");
        assert_eq!(
            (record.priority, record.idempotency_key.as_str()),
            (2, "k1")
        );
        assert_eq!(record.task_type, "resize");
        assert_eq!(record.traceparent, task.traceparent);
        assert_eq!(record.payload, task.payload);
        assert_eq!(record.result, result);

        // Past its own result TTL it is gone, though its bucket may live on.
        let expired = parse_stored(id.clone(), stored_at(&value, 1_764_400_060_250), Vec::new());
        assert!(matches!(expired, Ok(None)), "{expired:?}");

        // A list page's copy (finished_head in common.lua: cut after the spec's head).
        let comma = value.iter().position(|&b| b == b',').expect("a comma");
        let mut stop = comma + 2;
        for _ in 0..8 {
            let (length, after) = spec::take_length(&value[stop..]).expect("a length");
            stop = value.len() - after.len() + length;
        }
        let summary = parse_stored(id.clone(), stored(&value[..stop]), Vec::new())
            .expect("parses")
            .expect("not expired");
        assert_eq!(summary.task_type, "resize");
        assert!(summary.payload.is_empty() && summary.result.is_empty());

        // Damage is an error, never a panic or a guess.
        for cut in 0..stop {
            assert!(
                parse_stored(id.clone(), stored(&value[..cut]), Vec::new()).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = value.clone();
        bad[comma + 1] = b'9';
        assert!(parse_stored(id.clone(), stored(&bad), Vec::new()).is_err());
        // Without Redis's clock beside it, it cannot be judged: an error, not a guess.
        let alone = HashMap::from([(PACKED.to_owned(), value.clone())]);
        assert!(parse_stored(id, alone, Vec::new()).is_err());
    }

    #[test]
    fn a_damaged_field_is_an_error_naming_it() {
        let id = TaskId::from_parts("q", "01J");
        let task = crate::task::NewTask {
            id: id.clone(),
            task_type: "t".to_owned(),
            payload: Vec::new(),
            content_type: String::new(),
            run_at_ms: 0,
            delay_ms: 0,
            max_attempts: 3,
            backoff: None,
            timeout: std::time::Duration::from_secs(1),
            result_ttl: std::time::Duration::from_secs(1),
            priority: 0,
            headers: HashMap::new(),
            traceparent: String::new(),
            idempotency_key: String::new(),
        };
        let record = |extra: &[(&str, &str)]| {
            let mut fields: HashMap<String, Vec<u8>> = HashMap::new();
            fields.insert(SPEC.to_owned(), spec::encode(&task));
            fields.insert(STATE.to_owned(), b"2".to_vec());
            fields.insert(ATTEMPT.to_owned(), b"0".to_vec());
            fields.insert(MAX_ATTEMPTS.to_owned(), b"3".to_vec());
            for (k, v) in extra {
                fields.insert((*k).to_owned(), v.as_bytes().to_vec());
            }
            fields
        };
        assert!(parse(id.clone(), record(&[]), Vec::new()).is_ok());
        for field in [
            ATTEMPT,
            MAX_ATTEMPTS,
            STARTED,
            RUN_AT,
            PROGRESS,
            PRIORITY,
            STATE,
        ] {
            let error = parse(id.clone(), record(&[(field, "x7")]), Vec::new())
                .expect_err("damage must be an error");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
    }
}
