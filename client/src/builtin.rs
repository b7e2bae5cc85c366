//! The task types of the executor's built-in demo handlers.

use serde::{Deserialize, Serialize};

use crate::TaskType;

/// `fib`: F(n), exactly, as a decimal string (`{"n": 90}` -> `"2880067194370816120"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fib {
    /// Which Fibonacci number.
    pub n: u64,
}

impl TaskType for Fib {
    const NAME: &'static str = "fib";
    type Output = String;
}

/// `sleep`: waits `ms` milliseconds, reporting progress; stops early when cancelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sleep {
    /// How long.
    pub ms: u64,
}

/// What `sleep` returns: who ran it, at which attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepOutput {
    /// How long it slept.
    pub slept_ms: u64,
    /// The executor that ran the attempt.
    pub executor_id: String,
    /// The attempt.
    pub attempt: u32,
}

impl TaskType for Sleep {
    const NAME: &'static str = "sleep";
    type Output = SleepOutput;
}

/// `echo`: returns its payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo(pub serde_json::Value);

impl TaskType for Echo {
    const NAME: &'static str = "echo";
    type Output = serde_json::Value;
}

/// `flaky`: fails its first `failures` attempts, then returns the attempt number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flaky {
    /// How many attempts fail.
    pub failures: u32,
}

impl TaskType for Flaky {
    const NAME: &'static str = "flaky";
    type Output = u32;
}

/// `fail`: always fails with `message`; permanently (no retry) when `permanent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fail {
    /// The error.
    #[serde(default)]
    pub message: String,
    /// Skip the retries.
    #[serde(default)]
    pub permanent: bool,
}

impl TaskType for Fail {
    const NAME: &'static str = "fail";
    type Output = ();
}

/// `crash`: aborts the executor process (only on executors started with
/// `--enable-crash-handler`). A poison task, for fault tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Crash {}

impl TaskType for Crash {
    const NAME: &'static str = "crash";
    type Output = ();
}
