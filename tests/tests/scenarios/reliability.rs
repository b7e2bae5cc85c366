//! Never lose a task: the fault tests of issue 3, injected into real processes (SIGKILL,
//! SIGSTOP, Redis killed and restarted), plus the reconciler healing corrupted state.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use tarefa_client::SubmitOptions;
use tarefa_client::builtin::{Crash, Echo, Fail, Flaky, Sleep, SleepOutput};
use tarefa_proto::{self as pb, TaskState};
use tarefa_tests::{Harness, eventually};
use tonic::Code;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn queue_stats(h: &Harness, name: &str) -> Option<pb::Queue> {
    h.client
        .list_queues()
        .await
        .ok()?
        .into_iter()
        .find(|q| q.name == name)
}

/// 1. SIGKILL an executor holding 50 running tasks: all 50 succeed on another executor, and
/// only the killed ones ran twice.
#[tokio::test]
async fn killed_executor_tasks_are_redelivered() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(0)
        .executor_args(&["--lease-ms", "1500", "--concurrency", "50"])
        .start()
        .await?;
    h.add_executor(&[])?;
    let ids: Vec<String> = h
        .client
        .submit_many(
            (0..50).map(|_| Sleep { ms: 1500 }),
            &SubmitOptions::default(),
        )
        .await?
        .into_iter()
        .map(|t| t.id().to_owned())
        .collect();
    // Claimed, not merely delivered: an entry read but not yet claimed when its executor
    // dies is queued again as it was, without counting an attempt.
    eventually(
        "50 tasks running on the first executor",
        Duration::from_secs(20),
        || async {
            let mut running = 0;
            for id in &ids {
                if h.client.get(id).await.ok()?.state() == TaskState::Running {
                    running += 1;
                }
            }
            (running == 50).then_some(())
        },
    )
    .await;
    h.executors[0].kill();
    h.add_executor(&[])?;
    let mut redelivered = 0;
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            task.state(),
            TaskState::Succeeded,
            "{id}: {}",
            task.last_error
        );
        assert_eq!(task.executor_id, "executor-2");
        let output: SleepOutput = serde_json::from_slice(&task.result)?;
        assert_eq!(output.executor_id, "executor-2");
        assert!(task.attempt <= 2, "{id} ran {} times", task.attempt);
        if task.attempt == 2 {
            redelivered += 1;
            assert!(
                task.errors[0].message.contains("lease expired"),
                "{:?}",
                task.errors
            );
        }
    }
    // Every task was running on the killed executor, so each ran exactly twice: duplicates
    // are the killed attempts and nothing else.
    assert_eq!(redelivered, 50);
    Ok(())
}

/// Producers submitting one task after another until stopped, recording the ids accepted and
/// every failure (its status code and how long the call took); after a failure a producer
/// waits 50 ms before the next submit.
/// A failed submit: its status code and how long the call took.
type Failure = (Option<Code>, Duration);

struct SubmitLoad {
    accepted: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    producers: Vec<tokio::task::JoinHandle<Vec<Failure>>>,
}

impl SubmitLoad {
    fn start<T: tarefa_client::TaskType + Clone + Sync>(
        client: &tarefa_client::Client,
        producers: usize,
        task: T,
    ) -> Self {
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let producers = (0..producers)
            .map(|_| {
                let (client, accepted, stop, task) =
                    (client.clone(), accepted.clone(), stop.clone(), task.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match client.submit(task.clone()).await {
                            Ok(handle) => {
                                accepted.lock().expect("lock").push(handle.id().to_owned())
                            }
                            Err(error) => {
                                failures.push((error.code(), started.elapsed()));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Self {
            accepted,
            stop,
            producers,
        }
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }

    async fn wait_accepted(&self, what: &str, at_least: usize, within: Duration) {
        eventually(what, within, || async {
            (self.accepted_count() >= at_least).then_some(())
        })
        .await;
    }

    /// Stops the producers; returns the ids accepted and every failure.
    async fn stop(self) -> anyhow::Result<(Vec<String>, Vec<Failure>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for producer in self.producers {
            failures.extend(producer.await?);
        }
        let accepted = self.accepted.lock().expect("lock").clone();
        Ok((accepted, failures))
    }
}

/// 2. Redis SIGKILLed during a submit load, with AOF `appendfsync always`, then restarted:
/// every task whose submit returned OK reaches a final state.
#[tokio::test]
async fn redis_killed_under_load_loses_no_acknowledged_task() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .aof_always()
        .executors(1)
        .executor_args(&["--lease-ms", "5000"])
        .start()
        .await?;
    let load = SubmitLoad::start(&h.client, 8, Echo(serde_json::json!({"k": 1})));
    load.wait_accepted("some submits accepted", 200, Duration::from_secs(10))
        .await;
    h.redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.redis.restart().await?;
    let before = load.accepted_count();
    load.wait_accepted(
        "submits accepted again after the restart",
        before + 51,
        Duration::from_secs(20),
    )
    .await;
    let (ids, failures) = load.stop().await?;
    for (code, _) in failures {
        assert_eq!(
            code,
            Some(Code::Unavailable),
            "only UNAVAILABLE while redis was down"
        );
    }
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(task.state(), TaskState::Succeeded, "{id}");
    }
    Ok(())
}

/// 3. A poison task whose handler aborts the executor: DEAD after the configured deliveries,
/// while every other task succeeds. Executors that die are restarted, as a supervisor would.
#[tokio::test]
async fn poison_task_goes_dead_after_max_deliveries() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(2)
        .executor_args(&[
            "--lease-ms",
            "1000",
            "--max-deliveries",
            "3",
            "--enable-crash-handler",
        ])
        .start()
        .await?;
    let options = SubmitOptions {
        max_attempts: Some(10),
        ..SubmitOptions::default()
    };
    let poison = h.client.submit_with(Crash {}, &options).await?;
    let others: Vec<String> = h
        .client
        // Every crash-redelivery counts as an attempt, also for a task that merely shared the
        // crashed executor, so bystanders get attempts to spare (as the README advises).
        .submit_many((0..20).map(|i| Echo(serde_json::json!(i))), &options)
        .await?
        .into_iter()
        .map(|t| t.id().to_owned())
        .collect();
    let deadline = Instant::now() + tarefa_tests::patience(Duration::from_secs(60));
    let task = loop {
        let task = h.client.get(poison.id()).await?;
        if task.state() == TaskState::Dead {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "poison task still {:?}",
            task.state()
        );
        let crashed: Vec<usize> = (0..h.executors.len())
            .filter(|&i| !h.executors[i].is_running())
            .collect();
        for _ in &crashed {
            h.add_executor(&[])?;
        }
        for i in crashed.into_iter().rev() {
            h.executors.remove(i);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(task.attempt, 3, "one attempt per delivery");
    assert!(task.last_error.contains("poison"), "{}", task.last_error);
    for id in &others {
        let other = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            other.state(),
            TaskState::Succeeded,
            "{id}: {:?}",
            other.errors
        );
    }
    Ok(())
}

/// 4. Redis frozen (SIGSTOP) for 5 s under load: clients get UNAVAILABLE within the bounded
/// time, never a hang or UNKNOWN; afterwards every accepted task completes.
#[tokio::test]
async fn redis_outage_gives_unavailable_then_recovers() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .executor_args(&["--lease-ms", "10000"])
        .start()
        .await?;
    let load = SubmitLoad::start(&h.client, 4, Sleep { ms: 5 });
    load.wait_accepted("submits flowing", 50, Duration::from_secs(10))
        .await;
    let redis_pid = redis_pid(&h);
    nix::sys::signal::kill(redis_pid, Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    nix::sys::signal::kill(redis_pid, Signal::SIGCONT)?;
    let before = load.accepted_count();
    load.wait_accepted(
        "submits accepted after the outage",
        before + 21,
        Duration::from_secs(20),
    )
    .await;
    let (ids, failures) = load.stop().await?;
    for (code, took) in &failures {
        assert_eq!(*code, Some(Code::Unavailable), "an outage is UNAVAILABLE");
        assert!(
            *took < Duration::from_millis(4000),
            "a failed submit took {took:?}"
        );
    }
    assert!(!failures.is_empty(), "the outage was visible to clients");
    // One outage, one warning each: no flood of log lines.
    let executor_warnings = h.executors[0]
        .log()
        .matches("redis unavailable; backing off")
        .count();
    assert_eq!(executor_warnings, 1, "the executor logs an outage once");
    let scheduler_warnings = h
        .scheduler
        .process
        .log()
        .matches("answering UNAVAILABLE")
        .count();
    assert!(
        (1..=2).contains(&scheduler_warnings),
        "the scheduler logs an outage at most every 10 s, not per RPC: {scheduler_warnings}"
    );
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(task.state(), TaskState::Succeeded, "{id}");
    }
    Ok(())
}

fn redis_pid(h: &Harness) -> nix::unistd::Pid {
    let mut con = h.redis.connection();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .expect("INFO");
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id in INFO");
    nix::unistd::Pid::from_raw(pid)
}

/// 5. Retries with backoff, DEAD after max_attempts with every error kept, RetryTask.
#[tokio::test]
async fn retries_back_off_then_dead_then_retry_task() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let options = SubmitOptions {
        max_attempts: Some(5),
        backoff_initial: Some(Duration::from_millis(400)),
        ..SubmitOptions::default()
    };
    let flaky = h
        .client
        .submit_with(Flaky { failures: 2 }, &options)
        .await?;
    assert_eq!(flaky.wait().await?, 3, "succeeds on attempt 3");
    let task = h.client.get(flaky.id()).await?;
    assert_eq!(task.attempt, 3);
    assert_eq!(task.errors.len(), 2);
    // Full jitter keeps at least half of each delay: 200 ms, then 400 ms.
    let first_gap = task.errors[1].at_ms - task.errors[0].at_ms;
    assert!(
        first_gap >= 200,
        "backoff after attempt 1 was {first_gap} ms"
    );
    let second_gap = task.started_at_ms - task.errors[1].at_ms;
    assert!(
        second_gap >= 400,
        "backoff after attempt 2 was {second_gap} ms"
    );

    let options = SubmitOptions {
        max_attempts: Some(3),
        backoff_initial: Some(Duration::from_millis(50)),
        ..SubmitOptions::default()
    };
    let fail = Fail {
        message: "boom".to_owned(),
        permanent: false,
    };
    let dead = h.client.submit_with(fail, &options).await?;
    let task = h.wait_final(dead.id(), Duration::from_secs(20)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(task.attempt, 3);
    let attempts: Vec<u32> = task.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(task.errors.iter().all(|e| e.message == "boom"));
    let listed = h
        .client
        .list_tasks(pb::ListTasksRequest {
            queue: "default".to_owned(),
            state: TaskState::Dead as i32,
            ..Default::default()
        })
        .await?;
    assert!(listed.tasks.iter().any(|t| t.task_id == dead.id()));

    let retried = h.client.retry(dead.id()).await?;
    assert!(
        // Requeued; a fast executor may already have run and failed it once more.
        matches!(
            retried.state(),
            TaskState::Queued | TaskState::Running | TaskState::Retrying
        ),
        "{:?}",
        retried.state()
    );
    assert!(retried.attempt <= 1, "the attempt count was reset");
    let again = eventually(
        "the retried task to run again",
        Duration::from_secs(20),
        || async {
            let t = h.client.get(dead.id()).await.ok()?;
            (t.state() == TaskState::Dead && t.errors.len() == 6).then_some(t)
        },
    )
    .await;
    assert_eq!(again.attempt, 3, "the attempt count restarted from 1");
    let not_dead = h.client.retry(flaky.id()).await.unwrap_err();
    assert_eq!(not_dead.code(), Some(Code::FailedPrecondition));

    let permanent = Fail {
        message: "bad input".to_owned(),
        permanent: true,
    };
    let permanent = h.client.submit_with(permanent, &options).await?;
    let task = h.wait_final(permanent.id(), Duration::from_secs(20)).await;
    assert_eq!(
        (task.state(), task.attempt),
        (TaskState::Dead, 1),
        "no retry"
    );
    Ok(())
}

/// 6. A 5 s task under a 1 s lease is never run twice while its executor lives.
#[tokio::test]
async fn long_task_keeps_its_lease() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(2)
        .executor_args(&["--lease-ms", "1000"])
        .start()
        .await?;
    let handle = h.client.submit(Sleep { ms: 5000 }).await?;
    let output = handle.wait().await?;
    let task = h.client.get(handle.id()).await?;
    assert_eq!(task.attempt, 1);
    assert!(task.errors.is_empty(), "{:?}", task.errors);
    assert_eq!(output.attempt, 1);
    assert_eq!(output.executor_id, task.executor_id);
    Ok(())
}

/// 7. Delayed tasks run no earlier than their time, exactly once, with three executors
/// promoting concurrently.
#[tokio::test]
async fn delayed_tasks_run_once_on_time() -> anyhow::Result<()> {
    let h = Harness::builder().executors(3).start().await?;
    h.wait_for_executors("default", 3).await;
    let options = SubmitOptions {
        delay: Some(Duration::from_millis(1500)),
        ..SubmitOptions::default()
    };
    let submitted_at = now_ms();
    let handles = h
        .client
        .submit_many((0..60).map(|_| Sleep { ms: 1 }), &options)
        .await?;
    let first = h.client.get(handles[0].id()).await?;
    assert_eq!(first.state(), TaskState::Scheduled);
    assert!(first.run_at_ms >= submitted_at + 1500);
    for handle in &handles {
        let task = h.wait_final(handle.id(), Duration::from_secs(20)).await;
        assert_eq!(task.state(), TaskState::Succeeded);
        assert_eq!(task.attempt, 1, "ran once");
        assert!(
            task.started_at_ms >= task.run_at_ms,
            "started {} before {}",
            task.started_at_ms,
            task.run_at_ms
        );
    }
    Ok(())
}

/// 8. Cancel before run (scheduled and queued), and while running (the handler observes it).
#[tokio::test]
async fn cancel_before_and_while_running() -> anyhow::Result<()> {
    let mut h = Harness::builder().executors(1).start().await?;
    let later = SubmitOptions {
        delay: Some(Duration::from_secs(3600)),
        ..SubmitOptions::default()
    };
    let scheduled = h.client.submit_with(Sleep { ms: 1 }, &later).await?;
    let cancelled = h.client.cancel(scheduled.id()).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled);

    // Queued in a queue nobody serves yet; then an executor arrives and must skip it.
    let idle = SubmitOptions::queue("idle");
    let queued = h.client.submit_with(Sleep { ms: 1 }, &idle).await?;
    assert_eq!(
        h.client.cancel(queued.id()).await?.state(),
        TaskState::Cancelled
    );
    h.add_executor(&["--queues", "idle"])?;
    let after = h.client.submit_with(Sleep { ms: 1 }, &idle).await?;
    after.wait().await?;
    let queued = h.client.get(queued.id()).await?;
    assert_eq!(
        (queued.state(), queued.attempt, queued.started_at_ms),
        (TaskState::Cancelled, 0, 0)
    );

    let running = h.client.submit(Sleep { ms: 30_000 }).await?;
    h.wait_state(running.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    let asked = now_ms();
    let flagged = h.client.cancel(running.id()).await?;
    assert!(flagged.cancel_requested);
    let task = h
        .wait_state(running.id(), TaskState::Cancelled, Duration::from_secs(5))
        .await;
    assert!(
        task.finished_at_ms.saturating_sub(asked) < 1500,
        "the handler stopped {} ms after the cancel",
        task.finished_at_ms.saturating_sub(asked)
    );
    assert!(
        task.last_error.contains("interrupted by cancellation"),
        "{}",
        task.last_error
    );
    let again = h.client.cancel(running.id()).await.unwrap_err();
    assert_eq!(again.code(), Some(Code::FailedPrecondition));
    Ok(())
}

/// 9. An executor frozen past its lease (SIGSTOP) loses the task to another executor; when it
/// wakes (SIGCONT) its late outcome is rejected, and the recorded result is the second one's.
#[tokio::test]
async fn stalled_executor_outcome_is_fenced() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(1)
        .executor_args(&["--lease-ms", "1000"])
        .start()
        .await?;
    let handle = h.client.submit(Sleep { ms: 1500 }).await?;
    h.wait_state(handle.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    h.executors[0].signal(Signal::SIGSTOP);
    h.add_executor(&[])?;
    let task = eventually(
        "the second executor to run attempt 2",
        Duration::from_secs(15),
        || async {
            let t = h.client.get(handle.id()).await.ok()?;
            (t.attempt == 2 && t.executor_id == "executor-2").then_some(t)
        },
    )
    .await;
    assert!(task.errors[0].message.contains("lease expired"));
    // Wake the first executor while the second still runs the task: its attempt is stale.
    h.executors[0].signal(Signal::SIGCONT);
    let task = h.wait_final(handle.id(), Duration::from_secs(15)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!((task.attempt, task.executor_id.as_str()), (2, "executor-2"));
    let output: SleepOutput = serde_json::from_slice(&task.result)?;
    assert_eq!(output.executor_id, "executor-2");
    assert_eq!(output.attempt, 2);
    let first_log = &h.executors[0];
    eventually(
        "the first executor to notice it lost the task",
        Duration::from_secs(10),
        || async {
            let log = first_log.log();
            (log.contains("lease lost") || log.contains("outcome rejected")).then_some(())
        },
    )
    .await;
    Ok(())
}

/// 10. A hundred concurrent submits with one idempotency key create exactly one task.
#[tokio::test]
async fn concurrent_idempotent_submits_create_one_task() -> anyhow::Result<()> {
    let h = Harness::builder().executors(0).start().await?;
    let options = SubmitOptions {
        idempotency_key: Some("order-42".to_owned()),
        ..SubmitOptions::default()
    };
    let submits = (0..100).map(|_| {
        let client = h.client.clone();
        let options = options.clone();
        async move {
            client
                .submit_with(Echo(serde_json::json!("once")), &options)
                .await
        }
    });
    let results = futures::future::join_all(submits).await;
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for result in results {
        let handle = result?;
        ids.insert(handle.id().to_owned());
        if !handle.deduplicated() {
            fresh += 1;
        }
    }
    assert_eq!(ids.len(), 1, "one task id for every submit");
    assert_eq!(fresh, 1, "exactly one submit created it");
    let q = queue_stats(&h, "default").await.expect("default queue");
    assert_eq!((q.submitted_total, q.queued), (1, 1));
    Ok(())
}

/// The reconciler heals what no other path would: a scheduled task missing from its sorted
/// set, and a RUNNING task whose lease (its pending entry) vanished while its executor died.
#[tokio::test]
async fn reconciler_repairs_lost_indexes() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(1)
        .executor_args(&["--lease-ms", "1000", "--reconcile-interval-ms", "300"])
        .start()
        .await?;
    let options = SubmitOptions {
        delay: Some(Duration::from_millis(800)),
        ..SubmitOptions::default()
    };
    let scheduled = h.client.submit_with(Sleep { ms: 1 }, &options).await?;
    let local = scheduled
        .id()
        .split_once(':')
        .map(|(_, l)| l.to_owned())
        .expect("id");
    let mut con = h.redis.connection();
    let removed: i64 = redis::cmd("ZREM")
        .arg("tarefa:{default}:scheduled")
        .arg(&local)
        .query(&mut con)?;
    assert_eq!(removed, 1);
    let task = h.wait_final(scheduled.id(), Duration::from_secs(30)).await;
    assert_eq!(task.state(), TaskState::Succeeded, "re-indexed and run");

    let running = h.client.submit(Sleep { ms: 3000 }).await?;
    h.wait_state(running.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    let local = running
        .id()
        .split_once(':')
        .map(|(_, l)| l.to_owned())
        .expect("id");
    // A task submitted to run now has no record until something happens to it besides its
    // claim (the fast path); its executor's first heartbeat writes one. The damage repaired
    // here is a RUNNING record that lost its lease.
    let record = format!("tarefa:{{default}}:t:{local}");
    let entry: String = eventually(
        "the running task's record (written by its executor's heartbeat)",
        Duration::from_secs(10),
        || {
            let entry: Option<String> = redis::cmd("HGET")
                .arg(&record)
                .arg("entry")
                .query(&mut h.redis.connection())
                .ok()
                .flatten();
            async move { entry }
        },
    )
    .await;
    h.executors[0].kill();
    // A lease is the entry's place in the consumer group's pending list: acknowledge the entry
    // behind the executor's back and nothing would ever reclaim the task.
    let removed: i64 = redis::cmd("XACK")
        .arg("tarefa:{default}:stream")
        .arg("executors")
        .arg(&entry)
        .query(&mut con)?;
    assert_eq!(removed, 1, "the lease existed");
    h.add_executor(&[])?;
    let task = h.wait_final(running.id(), Duration::from_secs(40)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!((task.attempt, task.executor_id.as_str()), (2, "executor-2"));
    Ok(())
}

/// SIGTERM: the executor stops reading, finishes its in-flight task, exits cleanly.
#[tokio::test]
async fn sigterm_drains_in_flight_tasks() -> anyhow::Result<()> {
    let mut h = Harness::builder().executors(1).start().await?;
    let handle = h.client.submit(Sleep { ms: 1500 }).await?;
    h.wait_state(handle.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    // Blocking here is fine: nothing else runs on this test's runtime meanwhile.
    let clean = h.executors[0].terminate(Duration::from_secs(20)).await;
    assert!(clean, "exited 0");
    let task = h.client.get(handle.id()).await?;
    assert_eq!((task.state(), task.attempt), (TaskState::Succeeded, 1));
    assert!(h.executors[0].log().contains("executor drained"));
    Ok(())
}

/// Retry defaults per queue (`--queue-defaults`): a queue's tasks that do not say take them.
#[tokio::test]
async fn queue_defaults_apply_to_tasks_that_do_not_say() -> anyhow::Result<()> {
    let h = Harness::builder()
        .scheduler_args(&[
            "--queue-defaults",
            "mail:max_attempts=2,backoff_initial_ms=50,timeout_ms=4000",
        ])
        .executor_args(&["--queues", "mail,default"])
        .start()
        .await?;
    let fail = || Fail {
        message: "smtp down".to_owned(),
        permanent: false,
    };
    let mail = h
        .client
        .submit_with(fail(), &SubmitOptions::queue("mail"))
        .await?;
    let task = h.wait_final(mail.id(), Duration::from_secs(20)).await;
    assert_eq!((task.state(), task.attempt), (TaskState::Dead, 2));
    assert_eq!((task.max_attempts, task.timeout_ms), (2, 4000));
    let own = SubmitOptions {
        max_attempts: Some(1),
        ..SubmitOptions::queue("mail")
    };
    let explicit = h.client.submit_with(fail(), &own).await?;
    assert_eq!(
        h.client.get(explicit.id()).await?.max_attempts,
        1,
        "the submit's own value wins"
    );
    let later = SubmitOptions {
        delay: Some(Duration::from_secs(3600)),
        ..SubmitOptions::default()
    };
    let other = h.client.submit_with(fail(), &later).await?;
    assert_eq!(
        h.client.get(other.id()).await?.max_attempts,
        3,
        "other queues keep the global default"
    );
    Ok(())
}

/// RetryDeadTasks requeues each dead task of a queue once, even when they die again at once.
#[tokio::test]
async fn retry_dead_tasks_requeues_each_once() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let options = SubmitOptions {
        max_attempts: Some(1),
        ..SubmitOptions::default()
    };
    let fail = || Fail {
        message: "still broken".to_owned(),
        permanent: false,
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            h.client
                .submit_with(fail(), &options)
                .await?
                .id()
                .to_owned(),
        );
    }
    for id in &ids {
        assert_eq!(
            h.wait_final(id, Duration::from_secs(20)).await.state(),
            TaskState::Dead
        );
    }
    assert_eq!(h.client.retry_dead("default").await?, 3);
    for id in &ids {
        let task = eventually(
            "the retried task to die again",
            Duration::from_secs(20),
            || async {
                let t = h.client.get(id).await.ok()?;
                (t.state() == TaskState::Dead && t.errors.len() == 2).then_some(t)
            },
        )
        .await;
        assert_eq!(task.attempt, 1);
    }
    assert_eq!(h.client.retry_dead("nothing-here").await?, 0);
    Ok(())
}

/// Finished entries leave the stream by trimming behind the oldest running task, never by
/// being counted as waiting: while a long task pins the trim point the finished entries stay
/// (and the queue still reads 0 queued, 1 running); once it ends and its executor beats,
/// the stream empties.
#[tokio::test]
async fn finished_entries_are_trimmed_and_never_counted_as_queued() -> anyhow::Result<()> {
    let h = Harness::builder().executors(1).start().await?;
    let long = h.client.submit(Sleep { ms: 3000 }).await?;
    h.wait_state(long.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    let quick = h
        .client
        .submit_many((0..40).map(|_| Sleep { ms: 1 }), &SubmitOptions::default())
        .await?;
    for task in &quick {
        h.wait_final(task.id(), Duration::from_secs(20)).await;
    }
    let length = || -> anyhow::Result<u64> {
        let mut con = h.redis.connection();
        Ok(redis::cmd("XLEN")
            .arg("tarefa:{default}:stream")
            .query(&mut con)?)
    };
    let q = queue_stats(&h, "default").await.expect("default queue");
    assert_eq!(
        (q.queued, q.running),
        (0, 1),
        "finished entries are not waiting"
    );
    assert!(
        length()? > 1,
        "the running task pins the trim point, so finished entries wait behind it"
    );
    let task = h.wait_final(long.id(), Duration::from_secs(20)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    // At its next heartbeat the executor trims everything before the first entry not yet
    // delivered.
    let next = h.client.submit(Sleep { ms: 1 }).await?;
    h.wait_final(next.id(), Duration::from_secs(20)).await;
    eventually(
        "the stream to hold no finished entry",
        Duration::from_secs(10),
        || async { (length().ok()? == 0).then_some(()) },
    )
    .await;
    let q = queue_stats(&h, "default").await.expect("default queue");
    assert_eq!((q.queued, q.running, q.succeeded_total), (0, 0, 42));
    Ok(())
}
