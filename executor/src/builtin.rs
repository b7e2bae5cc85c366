//! The built-in demo handlers: `fib`, `sleep`, `echo`, `flaky`, `fail`, and (only when asked
//! for) `crash`. They double as the fixtures of Tarefa's own tests.

use std::time::Duration;

use num_bigint::BigUint;
use tarefa_client::builtin::{Crash, Echo, Fail, Fib, Flaky, Sleep, SleepOutput};

use crate::handler::{HandlerError, Registry, TaskContext};

/// Largest `n` `fib` accepts: F(n) has about n * 0.209 digits.
pub const FIB_MAX_N: u64 = 10_000_000;

/// Registers the demo handlers; `crash` only when `with_crash` is set.
pub fn register(registry: &mut Registry, with_crash: bool) {
    registry.handle_with_context::<Fib, _, _, _>(fib);
    registry.handle_with_context::<Sleep, _, _, _>(sleep);
    registry.handle::<Echo, _, _, HandlerError>(|args: Echo| async move { Ok(args.0) });
    registry.handle_with_context::<Flaky, _, _, _>(flaky);
    registry.handle::<Fail, _, _, _>(|args: Fail| async move {
        Err::<(), _>(if args.permanent {
            HandlerError::permanent(args.message)
        } else {
            HandlerError::retry(args.message)
        })
    });
    if with_crash {
        registry.handle::<Crash, _, _, HandlerError>(|_: Crash| async move {
            tracing::error!("crash handler: aborting the executor process on purpose");
            std::process::abort()
        });
    }
}

/// F(n), exactly, as a decimal string. Runs on the blocking pool: a large n is CPU work, and
/// its slot stays taken until the computation ends even if the attempt times out first.
async fn fib(args: Fib, context: TaskContext) -> Result<String, HandlerError> {
    if args.n > FIB_MAX_N {
        return Err(HandlerError::permanent(format!(
            "n must be at most {FIB_MAX_N}"
        )));
    }
    context
        .spawn_blocking(move || fibonacci(args.n).to_string())
        .await
}

/// F(n) by fast doubling: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)^2 + F(k+1)^2.
pub fn fibonacci(n: u64) -> BigUint {
    let mut a = BigUint::from(0u32); // F(k)
    let mut b = BigUint::from(1u32); // F(k+1)
    for bit in (0..64 - n.leading_zeros()).rev() {
        let two_b = &b << 1usize;
        let c = &a * (&two_b - &a);
        let d = &a * &a + &b * &b;
        if (n >> bit) & 1 == 0 {
            a = c;
            b = d;
        } else {
            b = &c + &d;
            a = d;
        }
    }
    a
}

/// Waits `ms`, reporting progress; stops early, and says so, when cancelled.
async fn sleep(args: Sleep, context: TaskContext) -> Result<SleepOutput, HandlerError> {
    let total = Duration::from_millis(args.ms);
    let started = tokio::time::Instant::now();
    let steps = 10u32;
    for step in 1..=steps {
        let until = started + total * step / steps;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = context.cancelled() => {
                return Err(HandlerError::permanent(format!(
                    "sleep interrupted by cancellation after {} ms",
                    started.elapsed().as_millis()
                )));
            }
        }
        if args.ms >= 1000 && step < steps {
            context
                .progress(
                    f64::from(step) / f64::from(steps),
                    &format!("slept {step}/{steps}"),
                )
                .await;
        }
    }
    Ok(SleepOutput {
        slept_ms: args.ms,
        executor_id: context.executor_id().to_owned(),
        attempt: context.attempt(),
    })
}

/// Fails its first `failures` attempts, then succeeds with the attempt number.
async fn flaky(args: Flaky, context: TaskContext) -> Result<u32, HandlerError> {
    if context.attempt() <= args.failures {
        return Err(HandlerError::retry(format!(
            "flaky: failing attempt {} of the first {}",
            context.attempt(),
            args.failures
        )));
    }
    Ok(context.attempt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fibonacci_matches_known_values() {
        assert_eq!(fibonacci(0).to_string(), "0");
        assert_eq!(fibonacci(1).to_string(), "1");
        assert_eq!(fibonacci(2).to_string(), "1");
        assert_eq!(fibonacci(10).to_string(), "55");
        assert_eq!(fibonacci(90).to_string(), "2880067194370816120");
        assert_eq!(fibonacci(100).to_string(), "354224848179261915075");
        assert_eq!(fibonacci(100_000).to_string().len(), 20899);
    }
}
