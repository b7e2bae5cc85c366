//! The attempts this executor holds, keyed by task **and** fencing token.
//!
//! An attempt is registered when it is claimed and leaves when its [`LeaseGuard`] drops: after
//! its outcome is written, or once the outcome is moot (lease lost, released). The heartbeat
//! renews exactly what is registered. Keying by token means that when attempt N of a task lost
//! its lease and attempt N+1 of the same task lands on this executor, the two are two entries:
//! N+1 never overwrites N, and N finishing never removes N+1.
//!
//! Poisoned locks: every lock here guards a plain map updated by single, non-panicking
//! operations, so a panic elsewhere cannot leave it half-updated; a poisoned lock is recovered
//! with [`lock`] (the house policy), never unwrapped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tarefa_queue::TaskId;
use tokio_util::sync::CancellationToken;

/// Locks `mutex`, recovering it if a panicking thread poisoned it (see the module docs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a running attempt is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// An operator cancelled the task.
    Cancelled,
    /// The lease expired and the task was taken back: the outcome would be rejected.
    LeaseLost,
    /// The executor is stopping and the grace period ran out: the attempt is released.
    Shutdown,
}

/// One attempt: a task and the fencing token of its claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AttemptKey {
    pub(crate) id: TaskId,
    pub(crate) fence: u64,
}

/// Tells a running attempt to stop, once, with the first reason given.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl StopSignal {
    /// Stops the attempt for `why`, unless it was already stopped for another reason.
    pub(crate) fn stop(&self, why: StopReason) {
        if self.reason.set(why).is_ok() {
            self.token.cancel();
        }
    }

    /// Why it was stopped, if it was.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    /// Cancelled when the attempt is stopped; handlers watch it through their context.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// The registry of held attempts.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<AttemptKey, StopSignal>>,
}

impl Leases {
    /// Registers an attempt. `None` when it is registered already: the same claim delivered
    /// again (a retried claim, or the group recreated), which must not run twice.
    pub(crate) fn register(self: &Arc<Self>, key: AttemptKey) -> Option<LeaseGuard> {
        let mut held = lock(&self.held);
        if held.contains_key(&key) {
            return None;
        }
        let signal = StopSignal::default();
        held.insert(key.clone(), signal.clone());
        Some(LeaseGuard {
            leases: self.clone(),
            key,
            signal,
        })
    }

    /// The attempts held in `queue`, as `(task, token)` pairs for the heartbeat.
    pub(crate) fn held_in(&self, queue: &str) -> Vec<(TaskId, u64)> {
        lock(&self.held)
            .keys()
            .filter(|key| key.id.queue() == queue)
            .map(|key| (key.id.clone(), key.fence))
            .collect()
    }

    /// Every attempt held.
    pub(crate) fn all(&self) -> Vec<AttemptKey> {
        lock(&self.held).keys().cloned().collect()
    }

    /// How many attempts are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.held).len()
    }

    /// Stops the named attempts (those still held) for `why`.
    pub(crate) fn stop(&self, attempts: &[(TaskId, u64)], why: StopReason) {
        if attempts.is_empty() {
            return;
        }
        let held = lock(&self.held);
        for (id, fence) in attempts {
            let key = AttemptKey {
                id: id.clone(),
                fence: *fence,
            };
            if let Some(signal) = held.get(&key) {
                signal.stop(why);
            }
        }
    }

    /// Stops every attempt held.
    pub(crate) fn stop_all(&self, why: StopReason) {
        for signal in lock(&self.held).values() {
            signal.stop(why);
        }
    }
}

/// An attempt's registration: renewed by the heartbeat while it lives, gone when it drops.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    leases: Arc<Leases>,
    key: AttemptKey,
    signal: StopSignal,
}

impl LeaseGuard {
    /// The attempt.
    pub(crate) fn key(&self) -> &AttemptKey {
        &self.key
    }

    /// Its stop signal.
    pub(crate) fn signal(&self) -> &StopSignal {
        &self.signal
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // `register` refuses duplicates, so the entry under this key is this guard's own.
        lock(&self.leases.held).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(local: &str, fence: u64) -> AttemptKey {
        AttemptKey {
            id: TaskId::from_parts("q", local),
            fence,
        }
    }

    #[test]
    fn two_attempts_of_one_task_are_two_registrations() {
        let leases = Arc::new(Leases::default());
        let old = leases.register(key("a", 1)).expect("first");
        let new = leases.register(key("a", 2)).expect("second");
        assert_eq!(leases.len(), 2);
        // The old attempt finishing removes only itself: the new one is still renewed.
        drop(old);
        assert_eq!(leases.held_in("q"), vec![(TaskId::from_parts("q", "a"), 2)]);
        drop(new);
        assert_eq!(leases.len(), 0);
    }

    #[test]
    fn the_same_attempt_cannot_be_registered_twice() {
        let leases = Arc::new(Leases::default());
        let first = leases.register(key("a", 7)).expect("first");
        assert!(leases.register(key("a", 7)).is_none());
        drop(first);
        assert!(leases.register(key("a", 7)).is_some());
    }

    #[test]
    fn stopping_names_the_attempt_not_the_task() {
        let leases = Arc::new(Leases::default());
        let old = leases.register(key("a", 1)).expect("old");
        let new = leases.register(key("a", 2)).expect("new");
        leases.stop(&[(TaskId::from_parts("q", "a"), 1)], StopReason::LeaseLost);
        assert_eq!(old.signal().reason(), Some(StopReason::LeaseLost));
        assert_eq!(new.signal().reason(), None);
        // The first reason wins.
        old.signal().stop(StopReason::Cancelled);
        assert_eq!(old.signal().reason(), Some(StopReason::LeaseLost));
        assert!(old.signal().token().is_cancelled());
    }
}
