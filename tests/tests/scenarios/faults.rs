//! Reliability II: the faults an outside audit found, each tried as an adversary would against
//! real processes (SIGSTOP, Redis restarted past the lease, Redis at maxmemory, a stale replay,
//! replicas with different flags, the consumer group lost), plus the suspected ones proven.

use std::time::Duration;

use nix::sys::signal::Signal;
use tarefa_client::SubmitOptions;
use tarefa_client::builtin::{Crash, Echo, Sleep, SleepOutput};
use tarefa_proto::{self as pb, TaskState};
use tarefa_tests::{Harness, eventually};
use tonic::Code;

/// `tarefa:{queue}:t:<ulid>` for a task id `queue:<ulid>`.
fn record_key(task_id: &str) -> String {
    let (queue, local) = task_id.split_once(':').expect("task id has a queue");
    format!("tarefa:{{{queue}}}:t:{local}")
}

fn sleep_output(task: &pb::Task) -> SleepOutput {
    serde_json::from_slice(&task.result).expect("a sleep result")
}

/// Waits until `executor` has heartbeated `beats` more times on `queue` (its `last_seen`
/// changed that often): by then it has looked at the queue again and again.
async fn wait_heartbeats(h: &Harness, queue: &str, executor: &str, beats: usize) {
    let mut last = String::new();
    let mut seen = 0;
    eventually(
        &format!("{beats} heartbeats of {executor}"),
        Duration::from_secs(20),
        || {
            let value: Option<String> = redis::cmd("HGET")
                .arg(format!("tarefa:{{{queue}}}:executors"))
                .arg(executor)
                .query(&mut h.redis.connection())
                .ok();
            if let Some(value) = value
                && value != last
            {
                last = value;
                seen += 1;
            }
            let done = seen > beats;
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// 1. `RetryTask` must not hand out a fencing token again: a frozen executor's stale outcome of
/// "attempt 1" is rejected after the task was buried, retried and claimed as attempt 1 again.
#[tokio::test]
async fn retry_task_never_reuses_a_fencing_token() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(1)
        .executor_args(&["--lease-ms", "1000"])
        .start()
        .await?;
    let options = SubmitOptions {
        max_attempts: Some(1),
        ..SubmitOptions::default()
    };
    let handle = h.client.submit_with(Sleep { ms: 2500 }, &options).await?;
    h.wait_state(handle.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    h.executors[0].signal(Signal::SIGSTOP);
    h.add_executor(&[])?;
    // The second executor's reclaim buries it (no attempts left), then an operator retries it.
    let dead = h
        .wait_state(handle.id(), TaskState::Dead, Duration::from_secs(15))
        .await;
    assert!(
        dead.last_error.contains("lease expired"),
        "{}",
        dead.last_error
    );
    h.client.retry(handle.id()).await?;
    let running = eventually(
        "the second executor to run attempt 1 again",
        Duration::from_secs(10),
        || async {
            let t = h.client.get(handle.id()).await.ok()?;
            (t.state() == TaskState::Running && t.executor_id == "executor-2").then_some(t)
        },
    )
    .await;
    assert_eq!(running.attempt, 1);
    // The frozen executor wakes: its sleep is over at once, and it reports "attempt 1".
    h.executors[0].signal(Signal::SIGCONT);
    let task = h.wait_final(handle.id(), Duration::from_secs(15)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    let output = sleep_output(&task);
    assert_eq!(
        (output.executor_id.as_str(), task.executor_id.as_str()),
        ("executor-2", "executor-2"),
        "the recorded result is the stale attempt's"
    );
    Ok(())
}

/// 2. Two attempts of one task on one executor are two attempts: attempt 1 losing its lease
/// while attempt 2 runs here neither hides attempt 2 from the heartbeat nor keeps running.
#[tokio::test]
async fn two_attempts_of_a_task_on_one_executor_stay_apart() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .executor_args(&["--lease-ms", "2000"])
        .start()
        .await?;
    let handle = h.client.submit(Sleep { ms: 5000 }).await?;
    let running = h
        .wait_state(handle.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    assert_eq!(running.attempt, 1);
    // Leases are judged only once Redis has served for a whole lease (see reclaim.lua).
    eventually(
        "redis to have served for a whole lease",
        Duration::from_secs(10),
        || {
            let mut con = h.redis.connection();
            let up: Option<u64> = redis::cmd("HGET")
                .arg("tarefa:{default}:clock")
                .arg("up")
                .query(&mut con)
                .ok();
            let now: Option<(u64, u64)> = redis::cmd("TIME").query(&mut con).ok();
            let served = match (up, now) {
                (Some(up), Some((s, us))) => (s * 1000 + us / 1000).saturating_sub(up) > 2200,
                _ => false,
            };
            async move { served.then_some(()) }
        },
    )
    .await;
    // A reclaim pass at the wrong moment: freeze the executor, age its lease past expiry and
    // reclaim by hand (as another executor's pass would), then let it go on.
    let executor = &h.executors[0];
    executor.signal(Signal::SIGSTOP);
    let mut con = h.redis.connection();
    let stream = "tarefa:{default}:stream";
    let entry: String = redis::cmd("HGET")
        .arg(record_key(handle.id()))
        .arg("entry")
        .query(&mut con)?;
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg("executors")
        .arg("executor-1")
        .arg(0)
        .arg(&entry)
        .arg("IDLE")
        .arg(100_000_000)
        .arg("JUSTID")
        .query(&mut con)?;
    let broker =
        tarefa_queue::Broker::new(tarefa_queue::BrokerConfig::new(h.redis.url().as_str()))?;
    let report = broker
        .reclaim("default", Duration::from_secs(30), 5, 100)
        .await?;
    assert_eq!(report.taken_back, 1, "{report:?}");
    executor.signal(Signal::SIGCONT);
    // The same executor claims attempt 2 while attempt 1 still runs there.
    let task = h.wait_final(handle.id(), Duration::from_secs(20)).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{:?}", task.errors);
    assert_eq!(task.attempt, 2, "{:?}", task.errors);
    assert_eq!(sleep_output(&task).attempt, 2);
    assert_eq!(task.errors.len(), 1, "{:?}", task.errors);
    Ok(())
}

/// 3. A Redis outage longer than the lease takes nothing from live executors: Redis is killed
/// and restarted (AOF, nothing lost) after twice the lease, and every running task finishes
/// as its first attempt.
#[tokio::test]
async fn redis_outage_longer_than_the_lease_restarts_nothing() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .aof_always()
        .executors(2)
        .executor_args(&["--lease-ms", "2000"])
        .start()
        .await?;
    let ids = h.running_sleeps(4, 3000).await?;
    h.redis.kill();
    // The outage itself: twice the lease, with every executor alive and heartbeating into the
    // void.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    h.redis.restart().await?;
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            task.state(),
            TaskState::Succeeded,
            "{id}: {:?}",
            task.errors
        );
        assert_eq!(task.attempt, 1, "{id} was restarted: {:?}", task.errors);
        assert!(task.errors.is_empty(), "{id}: {:?}", task.errors);
    }
    Ok(())
}

/// 4. At maxmemory under noeviction, running work finishes and new work is refused clearly:
/// submits answer RESOURCE_EXHAUSTED, running tasks succeed (none buried), a fresh executor
/// starts, and everything resumes once memory is available.
#[tokio::test]
async fn at_maxmemory_new_work_is_refused_and_running_work_finishes() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(1)
        .executor_args(&["--lease-ms", "1500"])
        .start()
        .await?;
    let ids = h.running_sleeps(3, 2500).await?;
    let mut con = h.redis.connection();
    let _: () = redis::cmd("SET")
        .arg("ballast")
        .arg(vec![b'x'; 8 << 20])
        .query(&mut con)?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("2mb")
        .query(&mut con)?;
    let refused = h
        .client
        .submit(Echo(serde_json::json!("hello")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    // A fresh executor starts and joins a new queue: its group creation and heartbeat are not
    // refused.
    h.add_executor(&["--queues", "default,fresh"])?;
    eventually(
        "the fresh executor's group and heartbeat on a new queue",
        Duration::from_secs(10),
        || {
            let mut con = h.redis.connection();
            let groups: Option<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg("tarefa:{fresh}:stream")
                .query(&mut con)
                .ok();
            let beat: Option<String> = redis::cmd("HGET")
                .arg("tarefa:{fresh}:executors")
                .arg("executor-2")
                .query(&mut con)
                .ok();
            let joined = groups.is_some() && beat.is_some();
            async move { joined.then_some(()) }
        },
    )
    .await;
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(
            task.state(),
            TaskState::Succeeded,
            "{id}: {:?}",
            task.errors
        );
        assert_eq!(task.attempt, 1, "{id}: {:?}", task.errors);
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut con)?;
    let echo = h
        .client
        .submit(Echo(serde_json::json!("after")))
        .await?
        .wait()
        .await?;
    assert_eq!(echo, serde_json::json!("after"));
    Ok(())
}

/// 5. A pause is honoured by an executor that was waiting for a free slot: a task submitted
/// after the pause does not start when the slot frees, only after the resume.
#[tokio::test]
async fn pause_holds_even_when_a_slot_frees_later() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .executor_args(&["--concurrency", "1"])
        .start()
        .await?;
    let long = h.client.submit(Sleep { ms: 1500 }).await?;
    h.wait_state(long.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    h.client.pause("default").await?;
    let waiting = h.client.submit(Echo(serde_json::json!("later"))).await?;
    let done = h.wait_final(long.id(), Duration::from_secs(10)).await;
    assert_eq!(done.state(), TaskState::Succeeded);
    // The slot is free; give the executor several heartbeats to (wrongly) take the task.
    wait_heartbeats(&h, "default", "executor-1", 3).await;
    let still = h.client.get(waiting.id()).await?;
    assert_eq!(
        still.state(),
        TaskState::Queued,
        "a paused queue's task started"
    );
    assert!(still.executor_id.is_empty());
    h.client.resume("default").await?;
    let task = h.wait_final(waiting.id(), Duration::from_secs(10)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    Ok(())
}

/// 6. Executors with different leases never take each other's tasks: one with a 400 ms lease
/// runs its reclaim passes beside one with the default 30 s lease that holds long tasks.
#[tokio::test]
async fn a_short_lease_executor_does_not_take_a_long_lease_executors_tasks() -> anyhow::Result<()> {
    let mut h = Harness::builder().executors(1).start().await?;
    let ids = h.running_sleeps(3, 2500).await?;
    h.add_executor(&["--lease-ms", "400"])?;
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(
            task.state(),
            TaskState::Succeeded,
            "{id}: {:?}",
            task.errors
        );
        assert_eq!(
            (task.attempt, task.executor_id.as_str()),
            (1, "executor-1"),
            "{id}: {:?}",
            task.errors
        );
    }
    Ok(())
}

/// 7. `--max-deliveries 0` is refused with a clear error; 1 works: a crashing task is buried as
/// poison after its one delivery, having run alone.
#[tokio::test]
async fn max_deliveries_is_validated_and_one_works() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(0)
        .executor_args(&["--enable-crash-handler", "--lease-ms", "1000"])
        .start()
        .await?;
    let zero = h.add_executor(&["--max-deliveries", "0"])?;
    eventually(
        "the executor with --max-deliveries 0 to refuse to start",
        Duration::from_secs(10),
        || {
            let exited = !h.executors[zero].is_running();
            async move { exited.then_some(()) }
        },
    )
    .await;
    assert!(
        h.executors[zero].log().contains("max-deliveries"),
        "{}",
        h.executors[zero].log()
    );
    h.add_executor(&["--max-deliveries", "1"])?;
    h.add_executor(&["--max-deliveries", "1"])?;
    let options = SubmitOptions {
        max_attempts: Some(10),
        ..SubmitOptions::default()
    };
    let crash = h.client.submit_with(Crash {}, &options).await?;
    let task = h.wait_final(crash.id(), Duration::from_secs(30)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert!(
        task.errors.iter().any(|e| e.message.contains("poison")),
        "{:?}",
        task.errors
    );
    // Exactly one executor died for it; the other still runs work.
    let echo = h
        .client
        .submit(Echo(serde_json::json!("alive")))
        .await?
        .wait()
        .await?;
    assert_eq!(echo, serde_json::json!("alive"));
    Ok(())
}

/// 8. A last-chance task waiting to run alone does not park unrelated work: its executor reads
/// nothing more meanwhile, and a new task runs at once on an idle executor.
#[tokio::test]
async fn a_last_chance_task_does_not_park_unrelated_work() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(1)
        .executor_args(&["--max-deliveries", "2", "--concurrency", "4"])
        .start()
        .await?;
    let long = h.client.submit(Sleep { ms: 4000 }).await?;
    h.wait_state(long.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    // A task whose earlier delivery ended with its executor gone: its next one is its last.
    // (A task with a delay has a record from submit; one due now would get its record only
    // when that earlier delivery was taken back.)
    h.client.pause("default").await?;
    let delayed = SubmitOptions {
        delay: Some(Duration::from_millis(300)),
        ..SubmitOptions::default()
    };
    let last = h.client.submit_with(Sleep { ms: 100 }, &delayed).await?;
    let _: () = redis::cmd("HSET")
        .arg(record_key(last.id()))
        .arg("dlv")
        .arg(1)
        .query(&mut h.redis.connection())?;
    h.client.resume("default").await?;
    // Claimed by executor-1, where it waits for the long task to finish.
    eventually(
        "the last-chance task to be claimed",
        Duration::from_secs(10),
        || async {
            let t = h.client.get(last.id()).await.ok()?;
            (t.state() == TaskState::Running).then_some(())
        },
    )
    .await;
    h.add_executor(&[])?;
    let echo = h.client.submit(Echo(serde_json::json!("now"))).await?;
    let echo = h.wait_final(echo.id(), Duration::from_secs(10)).await;
    assert_eq!(echo.state(), TaskState::Succeeded);
    assert_eq!(
        echo.executor_id, "executor-2",
        "parked behind the last-chance task"
    );
    let long = h.client.get(long.id()).await?;
    assert_eq!(
        long.state(),
        TaskState::Running,
        "the echo waited for the long task"
    );
    let last = h.wait_final(last.id(), Duration::from_secs(20)).await;
    assert_eq!(last.state(), TaskState::Succeeded);
    Ok(())
}

/// 9. Losing the consumer group (Redis restarted empty of it, or an operator's XGROUP DESTROY)
/// never runs one attempt twice on its executor.
#[tokio::test]
async fn a_lost_consumer_group_does_not_run_an_attempt_twice() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .env("RUST_LOG", "info,tarefa_executor=debug")
        .start()
        .await?;
    let handle = h.client.submit(Sleep { ms: 2500 }).await?;
    h.wait_state(handle.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("tarefa:{default}:stream")
        .arg("executors")
        .query(&mut h.redis.connection())?;
    let executor = &h.executors[0];
    eventually(
        "the executor to see its running attempt delivered again",
        Duration::from_secs(10),
        || {
            let seen = executor
                .log()
                .contains("delivered again while it runs here");
            async move { seen.then_some(()) }
        },
    )
    .await;
    let task = h.wait_final(handle.id(), Duration::from_secs(15)).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{:?}", task.errors);
    assert_eq!(task.attempt, 1);
    let runs = executor
        .log()
        .lines()
        .filter(|l| l.contains(handle.id()) && l.contains("task succeeded"))
        .count();
    assert_eq!(runs, 1, "attempt 1 ran {runs} times");
    Ok(())
}

/// The record of a task that succeeded on the fast path (born in the stream, first attempt) is
/// a field of its birth second's finished bucket, not a key of its own, and its stream entry
/// may outlive it (trimming takes whole nodes, and a running task pins the trim point). Losing
/// the consumer group then delivers those entries again: none of them runs twice, none gets a
/// second record, and each still reads as it finished.
#[tokio::test]
async fn a_lost_consumer_group_does_not_run_finished_tasks_again() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .env("RUST_LOG", "info,tarefa_executor=debug")
        .start()
        .await?;
    let mut con = h.redis.connection();
    // Whether a task (by its local id) has a record key of its own.
    let has_record = |con: &mut redis::Connection, local: &str| -> redis::RedisResult<bool> {
        redis::cmd("EXISTS")
            .arg(format!("tarefa:{{default}}:t:{local}"))
            .query(con)
    };
    // A long task first: while it runs, the entries after it are not trimmed.
    let long = h.client.submit(Sleep { ms: 60_000 }).await?;
    h.wait_state(long.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    let echoes = h.echoes_finished(20).await?;
    let mut finished = Vec::new();
    for (echo, task) in &echoes {
        assert_eq!(task.state(), TaskState::Succeeded, "{:?}", task.errors);
        // On the fast path: no record of its own, a field of its bucket. (Or, held by the
        // executor when a heartbeat renewed its lease, a record written then and no field:
        // never both, never neither.)
        let id = tarefa_queue::TaskId::parse(echo)?;
        let ms = id.entry_ms().expect("a task due now is named by its entry");
        let record = has_record(&mut con, id.local())?;
        let bucketed: bool = redis::cmd("HEXISTS")
            .arg(format!("tarefa:{{default}}:fin:{}", ms / 1000))
            .arg(id.local())
            .query(&mut con)?;
        assert!(
            record != bucketed,
            "{echo}: record {record}, bucketed {bucketed}"
        );
        finished.push((
            echo.clone(),
            id.local().to_owned(),
            task.finished_at_ms,
            bucketed,
        ));
    }
    assert!(
        finished.iter().any(|(.., bucketed)| *bucketed),
        "no echo was bucketed"
    );
    let stream = "tarefa:{default}:stream";
    let length: usize = redis::cmd("XLEN").arg(stream).query(&mut con)?;
    assert!(
        length > echoes.len(),
        "the finished entries were trimmed: {length}"
    );
    let succeeded_before = h.client.list_queues().await?[0].succeeded_total;

    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(stream)
        .arg("executors")
        .query(&mut con)?;
    // The executor recreates the group from the stream's start and reads every entry again:
    // the finished ones are dropped, the long task's is its own running attempt.
    eventually(
        "the finished tasks' entries to be dropped",
        Duration::from_secs(20),
        || {
            let length: redis::RedisResult<usize> = redis::cmd("XLEN")
                .arg(stream)
                .query(&mut h.redis.connection());
            async move { length.ok().filter(|&n| n <= 1).map(|_| ()) }
        },
    )
    .await;
    assert_eq!(
        h.client.list_queues().await?[0].succeeded_total,
        succeeded_before,
        "a finished task ran again"
    );
    let log = h.executors[0].log();
    for (id, local, finished_at, bucketed) in &finished {
        let named = format!("task_id={id} ");
        let runs = log
            .lines()
            .filter(|l| l.contains(&named) && l.contains("task succeeded"))
            .count();
        assert_eq!(runs, 1, "{id} ran {runs} times");
        let task = h.client.get(id).await?;
        assert_eq!(task.state(), TaskState::Succeeded);
        assert_eq!(task.finished_at_ms, *finished_at, "{id} was written again");
        if *bucketed {
            assert!(!has_record(&mut con, local)?, "{id} got a record");
        }
    }
    h.client.cancel(long.id()).await?;
    Ok(())
}

/// Tasks born in the same second share a finished bucket, which lives as long as the longest
/// result TTL among them; each is still gone, to every reader, once its own TTL has passed,
/// and listed until then (a shorter-lived task finishing later does not unlist it).
/// A task in a bucket is SUCCEEDED to CancelTask and RetryTask as well (refused with
/// FAILED_PRECONDITION, never NOT_FOUND).
#[tokio::test]
async fn tasks_sharing_a_finished_bucket_keep_their_own_result_ttl() -> anyhow::Result<()> {
    let h = Harness::builder().executors(1).start().await?;
    let with_ttl = |ms: u64| SubmitOptions {
        result_ttl: Some(Duration::from_millis(ms)),
        ..SubmitOptions::default()
    };
    // Two submits in the same second (their ids are their entries': ms-seq).
    let second = |id: &str| -> u64 {
        tarefa_queue::TaskId::parse(id)
            .ok()
            .and_then(|t| t.entry_ms())
            .map_or(u64::MAX, |ms| ms / 1000)
    };
    let (short, long) = eventually("two submits in one second", Duration::from_secs(20), || {
        let client = h.client.clone();
        let (short_ttl, long_ttl) = (with_ttl(1_500), with_ttl(3_600_000));
        async move {
            let short = client
                .submit_with(Echo(serde_json::json!("short")), &short_ttl)
                .await
                .ok()?;
            let long = client
                .submit_with(Echo(serde_json::json!("long")), &long_ttl)
                .await
                .ok()?;
            (second(short.id()) == second(long.id()) && second(long.id()) != u64::MAX)
                .then(|| (short.id().to_owned(), long.id().to_owned()))
        }
    })
    .await;
    for id in [&short, &long] {
        let task = h.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(task.state(), TaskState::Succeeded, "{:?}", task.errors);
    }
    let bucket = format!("tarefa:{{default}}:fin:{}", second(&long));
    let mut con = h.redis.connection();
    let fields: i64 = redis::cmd("HLEN").arg(&bucket).query(&mut con)?;
    assert!(fields >= 2, "{bucket} holds {fields}");

    for id in [&short, &long] {
        let refused = h.client.cancel(id).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
        assert!(refused.to_string().contains("SUCCEEDED"), "{refused}");
        let refused = h.client.retry(id).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
    }

    let gone = eventually("the short task to expire", Duration::from_secs(20), || {
        let client = h.client.clone();
        let short = short.clone();
        async move {
            let error = client.get(&short).await.err()?;
            Some(error)
        }
    })
    .await;
    assert_eq!(gone.code(), Some(Code::NotFound), "{gone}");
    let kept = h.client.get(&long).await?;
    assert_eq!(kept.state(), TaskState::Succeeded);
    assert_eq!(kept.result, b"\"long\"");
    let still: i64 = redis::cmd("HEXISTS")
        .arg(&bucket)
        .arg(short.split_once(':').map_or("", |p| p.1))
        .query(&mut con)?;
    assert_eq!(
        still, 1,
        "the bucket still holds the expired task (it lives for the long one)"
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&bucket).query(&mut con)?;
    assert!(
        ttl > 3_000_000,
        "the bucket expires with its longest-kept task: {ttl} ms"
    );
    // Another short-lived task finishing later trims the finished index by its own TTL only:
    // the long-kept task stays listed for as long as it can be read.
    let later = h
        .client
        .submit_with(Echo(serde_json::json!("later")), &with_ttl(1_500))
        .await?;
    let later = h.wait_final(later.id(), Duration::from_secs(20)).await;
    assert_eq!(later.state(), TaskState::Succeeded, "{:?}", later.errors);
    // The lists do not show the expired one.
    let page = h
        .client
        .list_tasks(pb::ListTasksRequest {
            queue: "default".to_owned(),
            state: TaskState::Succeeded as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await?;
    let listed: Vec<&str> = page.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert!(listed.contains(&long.as_str()), "{listed:?}");
    assert!(!listed.contains(&short.as_str()), "{listed:?}");
    Ok(())
}

/// Suspected: shutdown past the grace period charges nothing. A task with one attempt allowed,
/// interrupted by a rolling restart, runs again as attempt 1 and succeeds.
#[tokio::test]
async fn shutdown_past_the_grace_period_releases_uncharged() -> anyhow::Result<()> {
    let mut h = Harness::builder()
        .executors(1)
        .executor_args(&["--shutdown-grace-secs", "1"])
        .start()
        .await?;
    let options = SubmitOptions {
        max_attempts: Some(1),
        ..SubmitOptions::default()
    };
    let handle = h.client.submit_with(Sleep { ms: 4000 }, &options).await?;
    h.wait_state(handle.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    assert!(
        h.executors[0].terminate(Duration::from_secs(10)).await,
        "the executor did not exit cleanly"
    );
    let queued = h.client.get(handle.id()).await?;
    assert_eq!(queued.state(), TaskState::Queued, "{:?}", queued.errors);
    assert!(
        queued.last_error.contains("interrupted"),
        "{}",
        queued.last_error
    );
    h.add_executor(&[])?;
    let task = h.wait_final(handle.id(), Duration::from_secs(20)).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{:?}", task.errors);
    assert_eq!(task.attempt, 1);
    Ok(())
}

/// Suspected: a type no executor handles is handed back (uncharged) for an executor that has
/// it, and buried only after the configured bounces.
#[tokio::test]
async fn a_task_without_a_handler_waits_then_is_buried() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .executor_args(&["--no-handler-retries", "2"])
        .start()
        .await?;
    let id = h
        .client
        .submit_raw(SubmitOptions::default().request("no_such_type", b"{}".to_vec()))
        .await?
        .task_id;
    let waiting = h
        .wait_state(&id, TaskState::Retrying, Duration::from_secs(10))
        .await;
    assert_eq!(waiting.attempt, 0, "a bounce was charged as an attempt");
    let task = h.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert!(
        task.last_error.contains("no handler"),
        "{}",
        task.last_error
    );
    Ok(())
}

/// Suspected: one outcome that cannot be written (a damaged key in its queue) does not block
/// the executor's other outcomes.
#[tokio::test]
async fn an_unwritable_outcome_does_not_block_the_others() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .executor_args(&["--queues", "broken,healthy"])
        .start()
        .await?;
    let broken = h
        .client
        .submit_with(Sleep { ms: 500 }, &SubmitOptions::queue("broken"))
        .await?;
    h.wait_state(broken.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    // Damage it while it runs: its record becomes a string, so writing its outcome fails with
    // WRONGTYPE, every time, before the script writes anything.
    let mut con = h.redis.connection();
    let _: () = redis::cmd("DEL")
        .arg(record_key(broken.id()))
        .query(&mut con)?;
    let _: () = redis::cmd("SET")
        .arg(record_key(broken.id()))
        .arg("damaged")
        .query(&mut con)?;
    let executor = &h.executors[0];
    eventually("the outcome write to fail", Duration::from_secs(10), || {
        let failed = executor.log().contains("outcome write failed");
        async move { failed.then_some(()) }
    })
    .await;
    let healthy = h
        .client
        .submit_with(
            Echo(serde_json::json!("y")),
            &SubmitOptions::queue("healthy"),
        )
        .await?;
    let task = h.wait_final(healthy.id(), Duration::from_secs(10)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    eventually(
        "the unwritable outcome to be given up, loudly",
        Duration::from_secs(20),
        || {
            let given_up = executor.log().contains("outcome cannot be written");
            async move { given_up.then_some(()) }
        },
    )
    .await;
    Ok(())
}

/// Missing before: the start-up check of Redis's durability. Against a Redis without AOF (the
/// harness's default), both services warn; against one with AOF, they do not.
#[tokio::test]
async fn services_warn_at_start_when_redis_keeps_no_append_only_file() -> anyhow::Result<()> {
    let h = Harness::builder().executors(1).start().await?;
    h.wait_for_executors("default", 1).await;
    assert!(h.executors[0].log().contains("appendonly is off"));
    assert!(h.scheduler.process.log().contains("appendonly is off"));
    let durable = Harness::builder().aof_always().executors(1).start().await?;
    durable.wait_for_executors("default", 1).await;
    assert!(!durable.executors[0].log().contains("appendonly is off"));
    Ok(())
}

/// The scripts are one Redis function library, loaded by the services themselves. Attacked by
/// an operator's `FUNCTION FLUSH` while work flows (Redis keeps functions across restarts, so
/// only a flush or a new Redis loses them): the next call of each process loads the library
/// again and nothing is refused or lost; there is one library, named by its version's hash.
#[tokio::test]
async fn a_flushed_function_library_is_loaded_again() -> anyhow::Result<()> {
    let h = Harness::builder().executors(1).start().await?;
    let libraries = || -> anyhow::Result<Vec<String>> {
        let listed: Vec<Vec<redis::Value>> = redis::cmd("FUNCTION")
            .arg("LIST")
            .query(&mut h.redis.connection())?;
        Ok(listed
            .iter()
            .filter_map(|library| match library.get(1) {
                Some(redis::Value::BulkString(name)) => {
                    Some(String::from_utf8_lossy(name).into_owned())
                }
                _ => None,
            })
            .collect())
    };
    let before = h.client.submit(Echo(serde_json::json!("before"))).await?;
    let task = h.wait_final(before.id(), Duration::from_secs(20)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    let loaded = libraries()?;
    assert!(
        matches!(loaded.as_slice(), [name] if name.starts_with("tarefa_") && name.len() == 19),
        "{loaded:?}"
    );
    for round in 0..3 {
        let _: String = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query(&mut h.redis.connection())?;
        for (_, task) in h.echoes_finished(20).await? {
            assert_eq!(
                task.state(),
                TaskState::Succeeded,
                "round {round}: {:?}",
                task.errors
            );
        }
        assert_eq!(libraries()?, loaded, "round {round}");
    }
    Ok(())
}

/// Suspected: the scheduler's first calls after Redis restarted failed with UNAVAILABLE ("broken
/// pipe") although Redis was back. A command that never left for a dead connection is sent
/// again on the new one.
#[tokio::test]
async fn the_first_calls_after_a_redis_restart_succeed() -> anyhow::Result<()> {
    let mut h = Harness::builder().executors(0).start().await?;
    let first = h.client.submit(Echo(serde_json::json!(1))).await?;
    h.client.get(first.id()).await?;
    h.redis.restart().await?;
    let second = h.client.submit(Echo(serde_json::json!(2))).await;
    let second = second.expect("first submit after the restart");
    h.client
        .get(second.id())
        .await
        .map_err(|e| anyhow::anyhow!("first read after the restart: {e}"))?;
    Ok(())
}

/// Suspected: single submits batched together across queues. One queue failing (here a damaged
/// idempotency key) must not answer another queue's callers with an error, whether their tasks
/// were written (a retry would run them twice) or not.
#[tokio::test]
async fn a_failing_queue_does_not_fail_other_queues_submits_in_the_same_batch() -> anyhow::Result<()>
{
    let h = Harness::builder().executors(0).start().await?;
    let _: () = redis::cmd("HSET")
        .arg("tarefa:{broken}:i:dup")
        .arg("damaged")
        .arg("1")
        .query(&mut h.redis.connection())?;
    let broken = SubmitOptions {
        queue: Some("broken".to_owned()),
        idempotency_key: Some("dup".to_owned()),
        ..SubmitOptions::default()
    };
    let healthy = SubmitOptions::queue("healthy");
    let submits = (0..40).map(|i| {
        let client = h.client.clone();
        let options = if i % 2 == 0 {
            broken.clone()
        } else {
            healthy.clone()
        };
        async move {
            let answer = client
                .submit_with(Echo(serde_json::json!(i)), &options)
                .await;
            (options.queue, answer.map(|handle| handle.id().to_owned()))
        }
    });
    let answers = futures::future::join_all(submits).await;
    let mut written = Vec::new();
    for (queue, answer) in answers {
        match (queue.as_deref(), answer) {
            (Some("healthy"), Ok(id)) => written.push(id),
            (Some("healthy"), Err(error)) => panic!("a healthy queue's submit failed: {error}"),
            (_, answer) => assert!(answer.is_err(), "the damaged queue accepted a task"),
        }
    }
    assert_eq!(written.len(), 20);
    let queued = h.client.list_queues().await?;
    let healthy = queued
        .iter()
        .find(|q| q.name == "healthy")
        .expect("healthy");
    assert_eq!(healthy.queued, 20, "{healthy:?}");
    Ok(())
}

/// Issue 12's stored-size limits, enforced where outcomes are made: a result over
/// `--max-result-bytes` fails the task permanently, saying why (it used to be stored, after
/// which GetTask and WatchTask failed for ever); an error over `--max-error-bytes` is cut.
#[tokio::test]
async fn results_and_errors_over_their_limits_are_not_stored_whole() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(1)
        .executor_args(&["--max-result-bytes", "1000", "--max-error-bytes", "200"])
        .start()
        .await?;
    let big = h
        .client
        .submit(Echo(serde_json::json!("x".repeat(2000))))
        .await?;
    let task = h.wait_final(big.id(), Duration::from_secs(10)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert!(task.result.is_empty());
    assert!(
        task.last_error.contains("--max-result-bytes"),
        "{}",
        task.last_error
    );
    let small = h
        .client
        .submit(Echo(serde_json::json!("fits")))
        .await?
        .wait()
        .await?;
    assert_eq!(small, serde_json::json!("fits"));
    let wordy = h
        .client
        .submit(tarefa_client::builtin::Fail {
            message: "é".repeat(50_000),
            permanent: true,
        })
        .await?;
    let task = h.wait_final(wordy.id(), Duration::from_secs(10)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert!(
        task.last_error.len() < 300,
        "{} bytes stored",
        task.last_error.len()
    );
    assert!(
        task.last_error.contains("100000 bytes in all"),
        "{}",
        task.last_error
    );
    Ok(())
}

/// The fast path under attack. A task due now has no record while it waits and runs: its
/// stream entry carries it and names it, its lease is the entry's place in the group's pending
/// list, and its fencing token is computed from the entry (the birth token). An executor that
/// read such a task and died before writing anything (here a consumer that reads and claims it
/// and then vanishes: exactly what a SIGKILLed executor leaves behind) loses it when its lease
/// runs out: a real executor takes it back and runs attempt 2, and the dead executor's late
/// outcome, replayed under the birth token, is refused and changes nothing.
#[tokio::test]
async fn a_task_without_a_record_is_taken_back_and_its_stale_outcome_refused() -> anyhow::Result<()>
{
    use tarefa_queue::{Completion, Outcome, Written};
    let mut h = Harness::builder().executors(0).start().await?;
    let handle = h.client.submit(Echo(serde_json::json!("real"))).await?;
    let id = tarefa_queue::TaskId::parse(handle.id())?;
    let broker =
        tarefa_queue::Broker::new(tarefa_queue::BrokerConfig::new(h.redis.url().as_str()))?;
    broker.ensure_group("default").await?;
    let mut reader = broker.reader(Duration::from_millis(100))?;
    let entries = reader.read("default", "ghost", 10).await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].task, id.local(), "a birth entry names its task");
    let claimed = broker.claim("default", "ghost", 5, &entries).await?;
    let ghost = claimed.tasks.first().expect("the ghost claimed the task");
    assert_eq!((ghost.attempt, ghost.deliveries), (1, 1));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(record_key(handle.id()))
        .query(&mut h.redis.connection())?;
    assert_eq!(exists, 0, "a claimed fast-path task has no record");
    let running = h.client.get(handle.id()).await?;
    assert_eq!(running.state(), TaskState::Running);
    assert_eq!(
        (running.attempt, running.executor_id.as_str()),
        (1, "ghost")
    );

    h.add_executor(&["--lease-ms", "1000"])?;
    let task = h.wait_final(handle.id(), Duration::from_secs(30)).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{:?}", task.errors);
    assert_eq!(task.attempt, 2, "{:?}", task.errors);
    assert_eq!(task.result, b"\"real\"");
    assert!(
        task.errors
            .first()
            .is_some_and(|e| e.message.contains("lease expired") && e.message.contains("ghost")),
        "{:?}",
        task.errors
    );

    let late = Completion {
        id: id.clone(),
        fence: ghost.fence,
        spec: ghost.spec.clone(),
        max_attempts: ghost.max_attempts,
        birth: ghost.birth.clone(),
        outcome: Outcome::Succeeded(b"\"ghost\"".to_vec()),
    };
    let written = broker.complete("ghost", &[&late]).await;
    assert!(
        matches!(written.as_slice(), [Ok(Written::Fenced)]),
        "{written:?}"
    );
    let after = h.client.get(handle.id()).await?;
    assert_eq!(
        after.result, b"\"real\"",
        "the stale outcome changed nothing"
    );
    assert_eq!(after.attempt, 2);
    Ok(())
}

/// The birth token is computed twice, by the executor (from the entry id it read) and by the
/// scripts (from the task id, when they fence its outcome), and the two must agree for every
/// id Redis can give an entry, or a fast-path task's outcome would be refused. Entries with
/// the ids at the edges of the arithmetic (`ms * 1000 + min(seq, 999)`: a zero ms part, a
/// sequence of three digits and of more, a long one) are claimed by a real claim and
/// completed by a real outcome write: every token is the one expected, and every outcome is
/// recorded.
#[tokio::test]
async fn birth_tokens_agree_between_executor_and_scripts() -> anyhow::Result<()> {
    use tarefa_queue::{Completion, Outcome, Written};
    let h = Harness::builder().executors(0).start().await?;
    // A real packed spec, taken from a real birth entry in another queue.
    let model = h
        .client
        .submit_with(
            Echo(serde_json::json!("edge")),
            &SubmitOptions::queue("model"),
        )
        .await?;
    let (_, model_entry) = model.id().split_once(':').expect("queue:entry");
    let mut con = h.redis.connection();
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let rows: Vec<Entry> = redis::cmd("XRANGE")
        .arg("tarefa:{model}:stream")
        .arg(model_entry)
        .arg(model_entry)
        .query(&mut con)?;
    let fields = &rows.first().expect("the model entry").1;
    let ids = [
        "0-5",
        "1-0",
        "2-7",
        "3-999",
        "4-1000",
        "5-123456",
        "1795990708040-42",
    ];
    for id in ids {
        let mut xadd = redis::cmd("XADD");
        xadd.arg("tarefa:{edges}:stream").arg(id);
        for (name, value) in fields {
            xadd.arg(name).arg(value.as_slice());
        }
        let _: String = xadd.query(&mut con)?;
    }
    let broker =
        tarefa_queue::Broker::new(tarefa_queue::BrokerConfig::new(h.redis.url().as_str()))?;
    broker.ensure_group("edges").await?;
    let mut reader = broker.reader(Duration::from_millis(100))?;
    let entries = reader.read("edges", "edge-executor", 100).await?;
    assert_eq!(entries.len(), ids.len(), "{entries:?}");
    let claimed = broker.claim("edges", "edge-executor", 5, &entries).await?;
    assert_eq!(claimed.tasks.len(), ids.len(), "{:?}", claimed.tasks);
    let mut completions = Vec::new();
    for task in &claimed.tasks {
        let (ms, seq) = task.id.local().split_once('-').expect("an entry id");
        let expected = ms.parse::<u64>()? * 1000 + seq.parse::<u64>()?.min(999);
        assert_eq!(task.fence, expected, "birth token of {}", task.id);
        assert_eq!((task.attempt, task.deliveries), (1, 1), "{}", task.id);
        let running = h.client.get(&task.id.to_string()).await?;
        assert_eq!(running.state(), TaskState::Running, "{}", task.id);
        completions.push(Completion {
            id: task.id.clone(),
            fence: task.fence,
            spec: task.spec.clone(),
            max_attempts: task.max_attempts,
            birth: task.birth.clone(),
            outcome: Outcome::Succeeded(b"\"edge\"".to_vec()),
        });
    }
    let written = broker
        .complete("edge-executor", &completions.iter().collect::<Vec<_>>())
        .await;
    for (completion, written) in completions.iter().zip(&written) {
        assert!(
            matches!(written, Ok(Written::Recorded)),
            "{}: {written:?}",
            completion.id
        );
        let task = h.client.get(&completion.id.to_string()).await?;
        assert_eq!(task.state(), TaskState::Succeeded, "{}", completion.id);
        assert_eq!(task.result, b"\"edge\"");
    }
    // The same outcomes again (a retried write whose answer was lost): already recorded.
    let again = broker
        .complete("edge-executor", &completions.iter().collect::<Vec<_>>())
        .await;
    assert!(
        again
            .iter()
            .all(|w| matches!(w, Ok(Written::AlreadyRecorded))),
        "{again:?}"
    );
    Ok(())
}

/// A record-less task's outcome is fenced by its entry being pending (the complete script's
/// one XACK counts them), not by a row read per task. Attacked where that fence is thinnest:
/// the consumer group is destroyed and recreated while executor A runs a batch of birth tasks,
/// so executor B is handed the same entries again, with the same birth tokens and still no
/// record. Whichever finishes first is recorded, the other is refused: one outcome per task in
/// either order, never an overwrite, and each refused write stays refused when retried. A
/// different outcome under a recorded task's token is refused too.
#[tokio::test]
async fn a_regrouped_birth_task_records_exactly_one_outcome() -> anyhow::Result<()> {
    use tarefa_queue::{ClaimedTask, Completion, Outcome, Written};
    let h = Harness::builder().executors(0).start().await?;
    let broker =
        tarefa_queue::Broker::new(tarefa_queue::BrokerConfig::new(h.redis.url().as_str()))?;
    let stream = "tarefa:{regroup}:stream";
    let completions = |tasks: &[ClaimedTask], result: &[u8]| -> Vec<Completion> {
        tasks
            .iter()
            .map(|task| Completion {
                id: task.id.clone(),
                fence: task.fence,
                spec: task.spec.clone(),
                max_attempts: task.max_attempts,
                birth: task.birth.clone(),
                outcome: Outcome::Succeeded(result.to_vec()),
            })
            .collect()
    };
    for a_first in [true, false] {
        let submitted = h
            .client
            .submit_many(
                (0..6).map(|i| Echo(serde_json::json!(i))),
                &SubmitOptions::queue("regroup"),
            )
            .await?;
        broker.ensure_group("regroup").await?;
        let mut reader = broker.reader(Duration::from_millis(100))?;
        let read_a = reader.read("regroup", "executor-a", 100).await?;
        let claimed_a = broker.claim("regroup", "executor-a", 5, &read_a).await?;
        assert_eq!(
            claimed_a.tasks.len(),
            submitted.len(),
            "{:?}",
            claimed_a.tasks
        );
        assert!(
            claimed_a.tasks.iter().all(|t| t.birth.is_some()),
            "born in the stream"
        );
        // The group is lost and made again from the stream's start: B gets the same entries.
        let _: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(stream)
            .arg("executors")
            .query(&mut h.redis.connection())?;
        broker.ensure_group("regroup").await?;
        let read_b = reader.read("regroup", "executor-b", 100).await?;
        let claimed_b = broker.claim("regroup", "executor-b", 5, &read_b).await?;
        let mine: Vec<_> = claimed_b
            .tasks
            .iter()
            .filter(|t| claimed_a.tasks.iter().any(|a| a.id == t.id))
            .cloned()
            .collect();
        assert_eq!(mine.len(), submitted.len(), "B is handed A's tasks again");
        let (a, b) = (
            completions(&claimed_a.tasks, b"\"a\""),
            completions(&mine, b"\"b\""),
        );
        let (first, second, winner) = if a_first {
            (("executor-a", &a), ("executor-b", &b), b"\"a\"".as_slice())
        } else {
            (("executor-b", &b), ("executor-a", &a), b"\"b\"".as_slice())
        };
        let written = broker
            .complete(first.0, &first.1.iter().collect::<Vec<_>>())
            .await;
        assert!(
            written.iter().all(|w| matches!(w, Ok(Written::Recorded))),
            "the first to finish is recorded: {written:?}"
        );
        for _ in 0..2 {
            let late = broker
                .complete(second.0, &second.1.iter().collect::<Vec<_>>())
                .await;
            assert!(
                late.iter().all(|w| matches!(w, Ok(Written::Fenced))),
                "the other attempt is refused (a_first: {a_first}): {late:?}"
            );
        }
        // The winner's token with another result: not a retry of the recorded write.
        let changed = completions(
            if a_first { &claimed_a.tasks } else { &mine },
            b"\"changed\"",
        );
        let refused = broker
            .complete(first.0, &changed.iter().collect::<Vec<_>>())
            .await;
        assert!(
            refused.iter().all(|w| matches!(w, Ok(Written::Fenced))),
            "{refused:?}"
        );
        for handle in &submitted {
            let task = h.client.get(handle.id()).await?;
            assert_eq!(task.state(), TaskState::Succeeded, "{}", handle.id());
            assert_eq!(
                task.result,
                winner,
                "{}: one outcome, never overwritten",
                handle.id()
            );
            assert_eq!(task.executor_id, first.0, "{}", handle.id());
        }
        let stats = h.client.list_queues().await?;
        let regroup = stats
            .iter()
            .find(|q| q.name == "regroup")
            .expect("the queue");
        assert_eq!(
            regroup.succeeded_total,
            if a_first { 6 } else { 12 },
            "each task counted once"
        );
    }
    Ok(())
}

/// Submits an `Echo` of `label` until the scheduler's answer names the task as wanted: by its
/// stream entry (`born`: born in the stream) or by a ULID (given a record). Returns its id.
async fn submit_until_named(
    h: &Harness,
    what: &str,
    label: &str,
    born: bool,
    within: Duration,
) -> String {
    eventually(what, within, || async {
        let handle = h.client.submit(Echo(serde_json::json!(label))).await.ok()?;
        let entry = tarefa_queue::TaskId::parse(handle.id()).is_ok_and(|task| task.is_entry());
        (entry == born).then(|| handle.id().to_owned())
    })
    .await
}

/// A rolling upgrade where the scheduler goes first. An executor of an earlier version takes a
/// birth entry (a task due now that lives in its stream entry, with no `id` field) for a
/// leftover and deletes it, so while one is alive the scheduler must not write any: tasks due
/// now get a record (a ULID id) and an entry naming it, as earlier versions wrote them. Such an
/// executor shows as a heartbeat without a field in the queue's `layouts` hash (its heartbeat
/// script predates it); here one is forged beside a real executor of this version. Every task
/// submitted meanwhile (plain, and with an idempotency key: deduplicated as ever) runs, and once
/// the earlier executor is gone the fast path comes back.
#[tokio::test]
async fn executors_of_an_earlier_version_get_tasks_they_can_read() -> anyhow::Result<()> {
    let h = Harness::builder().executors(1).start().await?;
    h.wait_for_executors("default", 1).await;
    let is_entry_id = |id: &str| tarefa_queue::TaskId::parse(id).is_ok_and(|task| task.is_entry());
    let before = h.client.submit(Echo(serde_json::json!("before"))).await?;
    assert!(is_entry_id(before.id()), "{}", before.id());

    let mut con = h.redis.connection();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut con)?;
    let now_ms = secs * 1000 + micros / 1000;
    let _: i64 = redis::cmd("HSET")
        .arg("tarefa:{default}:executors")
        .arg("executor-of-an-earlier-version")
        .arg(format!("{now_ms}|old-host|0"))
        .query(&mut con)?;
    let during = submit_until_named(
        &h,
        "a submit that gets a record, while the earlier executor is alive",
        "during",
        false,
        Duration::from_secs(10),
    )
    .await;
    let local = during.rsplit_once(':').map_or("", |(_, l)| l);
    assert_eq!(local.len(), 26, "a ULID: {during}");
    let kept = h.wait_final(&during, Duration::from_secs(10)).await;
    assert_eq!(kept.state(), TaskState::Succeeded, "{:?}", kept.errors);
    assert_eq!(kept.result, b"\"during\"");
    let keyed = SubmitOptions {
        idempotency_key: Some("during-upgrade".to_owned()),
        ..SubmitOptions::default()
    };
    let first = h
        .client
        .submit_with(Echo(serde_json::json!("keyed")), &keyed)
        .await?;
    let second = h
        .client
        .submit_with(Echo(serde_json::json!("keyed")), &keyed)
        .await?;
    assert!(!is_entry_id(first.id()), "{}", first.id());
    assert_eq!(first.id(), second.id(), "deduplicated as ever");
    let keyed_task = h.wait_final(first.id(), Duration::from_secs(10)).await;
    assert_eq!(
        keyed_task.state(),
        TaskState::Succeeded,
        "{:?}",
        keyed_task.errors
    );

    let _: i64 = redis::cmd("HDEL")
        .arg("tarefa:{default}:executors")
        .arg("executor-of-an-earlier-version")
        .query(&mut con)?;
    let after = submit_until_named(
        &h,
        "a submit born in the stream again, once the earlier executor is gone",
        "after",
        true,
        Duration::from_secs(15),
    )
    .await;
    let finished = h.wait_final(&after, Duration::from_secs(10)).await;
    assert_eq!(
        finished.state(),
        TaskState::Succeeded,
        "{:?}",
        finished.errors
    );
    Ok(())
}

/// Cancelling a fast-path task: while it waits it is CANCELLED at once and never runs; while
/// it runs (before anything wrote its record) its executor hears of it at the next heartbeat
/// and stops it.
#[tokio::test]
async fn a_task_without_a_record_can_be_cancelled_waiting_and_running() -> anyhow::Result<()> {
    let mut h = Harness::builder().executors(0).start().await?;
    let waiting = h.client.submit(Sleep { ms: 1 }).await?;
    let cancelled = h.client.cancel(waiting.id()).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    let running = h.client.submit(Sleep { ms: 20_000 }).await?;
    h.add_executor(&[])?;
    h.wait_state(running.id(), TaskState::Running, Duration::from_secs(10))
        .await;
    h.client.cancel(running.id()).await?;
    let task = h.wait_final(running.id(), Duration::from_secs(10)).await;
    assert_eq!(task.state(), TaskState::Cancelled, "{:?}", task.errors);
    let again = h.client.get(waiting.id()).await?;
    assert_eq!(
        again.state(),
        TaskState::Cancelled,
        "the waiting one never ran"
    );
    assert_eq!(again.attempt, 0);
    Ok(())
}
