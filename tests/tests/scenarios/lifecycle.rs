//! A task's life at its edges, against real processes: an attempt that outlives its timeout,
//! results and dead tasks that expire, `tarefa dev` from start to Ctrl-C, and the dashboard's
//! cancel action.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tarefa_client::SubmitOptions;
use tarefa_client::builtin::{Echo, Fail, Fib, Flaky, Sleep};
use tarefa_proto::{self as pb, TaskState};
use tarefa_tests::{Harness, Process, binary, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Patience for things that take a few seconds at most.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `task_id` is in `state`.
async fn wait_state(h: &Harness, task_id: &str, state: TaskState) -> pb::Task {
    let client = h.client.clone();
    eventually(&format!("task {task_id} {state:?}"), PATIENCE, || {
        let client = client.clone();
        async move {
            let task = client.get(task_id).await.ok()?;
            (task.state() == state).then_some(task)
        }
    })
    .await
}

/// Waits until GetTask answers NOT_FOUND for `task_id`.
async fn wait_gone(h: &Harness, task_id: &str, within: Duration) {
    let client = h.client.clone();
    eventually(&format!("task {task_id} to expire"), within, || {
        let client = client.clone();
        async move {
            let error = client.get(task_id).await.err()?;
            assert_eq!(error.code(), Some(Code::NotFound), "{error}");
            Some(())
        }
    })
    .await;
}

/// Succeeded tasks are listed from two kinds of `done` members: a task with a record (here,
/// one that succeeded after a retry, or an echo a heartbeat gave one) is a member of its own; the first-attempt successes of a
/// second's finished bucket share one. Pages of 7 over both kinds, and over buckets of several
/// seconds, list every succeeded task exactly once, newest bucket first; the CANCELLED list
/// and a type filter see none of the bucketed tasks; `done` holds one member per bucket.
#[tokio::test]
async fn finished_tasks_are_listed_in_pages_across_buckets_and_records() -> anyhow::Result<()> {
    let h = Harness::builder().executors(1).start().await?;
    let second_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    let mut echoes: Vec<(u64, String)> = Vec::new();
    for round in 0..3 {
        for (handle, task) in h.echoes_finished(15).await? {
            assert_eq!(task.state(), TaskState::Succeeded);
            let id = tarefa_queue::TaskId::parse(&handle)?;
            let ms = id.entry_ms().expect("born in the stream");
            echoes.push((ms, handle));
        }
        if round < 2 {
            // The next round is born in a later second: another bucket.
            let last = echoes
                .iter()
                .map(|(ms, _)| ms / 1000)
                .max()
                .unwrap_or_default();
            eventually("the next second", Duration::from_secs(3), || async {
                (second_now() > last).then_some(())
            })
            .await;
        }
    }
    // An echo held by the executor when its heartbeat renewed its lease got a record then
    // (renew.lua writes the start time down) and is listed as a member of its own; the others
    // are in their buckets.
    let mut bucketed = Vec::new();
    let mut materialized = 0;
    for (ms, id) in echoes.iter().cloned() {
        let local = tarefa_queue::TaskId::parse(&id)?.local().to_owned();
        let has_record: bool = redis::cmd("EXISTS")
            .arg(format!("tarefa:{{default}}:t:{local}"))
            .query(&mut h.redis.connection())?;
        if has_record {
            materialized += 1;
        } else {
            bucketed.push((ms, id));
        }
    }
    assert!(!bucketed.is_empty(), "no echo was bucketed");
    let options = SubmitOptions {
        max_attempts: Some(3),
        backoff_initial: Some(Duration::from_millis(50)),
        backoff_max: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let mut recorded = Vec::new();
    for _ in 0..3 {
        let flaky = h
            .client
            .submit_with(Flaky { failures: 1 }, &options)
            .await?;
        assert_eq!(flaky.wait().await?, 2);
        recorded.push(flaky.id().to_owned());
    }
    let cancelled = h
        .client
        .submit_with(
            Sleep { ms: 1 },
            &SubmitOptions {
                delay: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        )
        .await?;
    h.client.cancel(cancelled.id()).await?;

    let pages = |state: TaskState, task_type: &str| {
        let client = h.client.clone();
        let task_type = task_type.to_owned();
        async move {
            let mut ids = Vec::new();
            let mut token = String::new();
            for _ in 0..100 {
                let page = client
                    .list_tasks(pb::ListTasksRequest {
                        queue: "default".to_owned(),
                        state: state as i32,
                        task_type: task_type.clone(),
                        page_size: 7,
                        page_token: token.clone(),
                    })
                    .await
                    .expect("list tasks");
                assert!(page.tasks.len() <= 7);
                ids.extend(page.tasks.into_iter().map(|t| t.task_id));
                if page.next_page_token.is_empty() {
                    return ids;
                }
                token = page.next_page_token;
            }
            panic!("more than 100 pages");
        }
    };
    let succeeded = pages(TaskState::Succeeded, "").await;
    let unique: BTreeSet<&String> = succeeded.iter().collect();
    assert_eq!(unique.len(), succeeded.len(), "listed twice: {succeeded:?}");
    let expected: BTreeSet<&String> = echoes.iter().map(|(_, id)| id).chain(&recorded).collect();
    assert_eq!(unique, expected);
    // The bucketed tasks come newest bucket first.
    let seconds: Vec<u64> = succeeded
        .iter()
        .filter_map(|id| bucketed.iter().find(|(_, b)| b == id))
        .map(|(ms, _)| ms / 1000)
        .collect();
    assert!(
        seconds.windows(2).all(|w| w[0] >= w[1]),
        "not newest bucket first: {seconds:?}"
    );
    assert_eq!(pages(TaskState::Succeeded, "flaky").await.len(), 3);
    assert_eq!(
        pages(TaskState::Cancelled, "").await,
        vec![cancelled.id().to_owned()]
    );
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("tarefa:{default}:done")
        .arg(0)
        .arg(-1)
        .query(&mut h.redis.connection())?;
    let distinct: BTreeSet<u64> = bucketed.iter().map(|(ms, _)| ms / 1000).collect();
    assert_eq!(
        members.iter().filter(|m| m.starts_with('@')).count(),
        distinct.len(),
        "one member per bucket: {members:?}"
    );
    assert_eq!(
        members.len(),
        distinct.len() + materialized + recorded.len() + 1,
        "{members:?}"
    );
    Ok(())
}

/// The ids of `queue`'s tasks in `state`, as ListTasks gives them.
async fn listed(h: &Harness, queue: &str, state: TaskState) -> BTreeSet<String> {
    let page = h
        .client
        .list_tasks(pb::ListTasksRequest {
            queue: queue.to_owned(),
            state: state as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list tasks");
    page.tasks.into_iter().map(|t| t.task_id).collect()
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_stopped_retried_and_buried_with_every_error()
-> anyhow::Result<()> {
    // One slot: the second and third attempts can only start once the timed-out handler has
    // been stopped and has given its slot back.
    let h = Harness::builder()
        .executor_args(&["--concurrency", "1"])
        .start()
        .await?;
    let options = SubmitOptions {
        timeout: Some(Duration::from_millis(300)),
        max_attempts: Some(3),
        backoff_initial: Some(Duration::from_millis(50)),
        backoff_max: Some(Duration::from_millis(100)),
        ..SubmitOptions::default()
    };
    // Ten minutes of sleep: only the timeout can end these attempts within the test.
    let handle = h
        .client
        .submit_with(Sleep { ms: 600_000 }, &options)
        .await?;
    let task = h.wait_final(handle.id(), PATIENCE).await;
    assert_eq!(task.state(), TaskState::Dead, "{task:?}");
    assert_eq!(task.attempt, 3, "{task:?}");
    assert!(task.result.is_empty(), "a stopped handler has no result");
    let attempts: Vec<u32> = task.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "every attempt's error: {:?}",
        task.errors
    );
    for error in &task.errors {
        assert!(
            error.message.contains("timed out after 300 ms"),
            "attempt {}: {:?}",
            error.attempt,
            error.message
        );
    }
    assert!(task.last_error.contains("timed out"), "{task:?}");

    // The slot is free again: a task submitted now runs at once.
    let echo = h.client.submit(Echo(serde_json::json!("after"))).await?;
    let output = tokio::time::timeout(PATIENCE, echo.wait()).await??;
    assert_eq!(output, serde_json::json!("after"));
    Ok(())
}

#[tokio::test]
async fn a_result_disappears_after_its_result_ttl() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let short = SubmitOptions {
        result_ttl: Some(Duration::from_secs(1)),
        ..SubmitOptions::default()
    };
    let fleeting = h.client.submit_with(Fib { n: 20 }, &short).await?;
    let kept = h.client.submit(Fib { n: 21 }).await?;
    assert_eq!(fleeting.wait().await?, "6765");
    assert_eq!(kept.wait().await?, "10946");
    // Readable when it has just finished…
    let task = h.client.get(fleeting.id()).await?;
    assert_eq!(task.state(), TaskState::Succeeded);

    // …and gone after its TTL, while a task with the default TTL stays.
    wait_gone(&h, fleeting.id(), Duration::from_secs(15)).await;
    let still = h.client.get(kept.id()).await?;
    assert_eq!(still.state(), TaskState::Succeeded);
    let succeeded = listed(&h, "default", TaskState::Succeeded).await;
    assert!(
        !succeeded.contains(fleeting.id()),
        "an expired task is still listed: {succeeded:?}"
    );
    assert!(succeeded.contains(kept.id()), "{succeeded:?}");
    Ok(())
}

#[tokio::test]
async fn a_dead_task_disappears_after_the_dead_ttl() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executor_args(&["--dead-ttl-secs", "1"])
        .start()
        .await?;
    let options = SubmitOptions {
        max_attempts: Some(2),
        backoff_initial: Some(Duration::from_millis(50)),
        ..SubmitOptions::default()
    };
    let doomed = h
        .client
        .submit_with(
            Fail {
                message: "smtp down".to_owned(),
                permanent: false,
            },
            &options,
        )
        .await?;
    let task = wait_state(&h, doomed.id(), TaskState::Dead).await;
    assert_eq!(task.errors.len(), 2, "{task:?}");
    wait_gone(&h, doomed.id(), Duration::from_secs(15)).await;
    let dead = listed(&h, "default", TaskState::Dead).await;
    assert!(
        !dead.contains(doomed.id()),
        "an expired dead task is still listed: {dead:?}"
    );
    Ok(())
}

/// The pids of `pid`'s live descendants (zombies excluded), from /proc.
fn descendants(pid: i32) -> Vec<(i32, String)> {
    let mut parents = vec![pid];
    let mut found = Vec::new();
    while let Some(parent) = parents.pop() {
        for (child, name) in live_processes()
            .into_iter()
            .filter(|(_, ppid, _)| *ppid == parent)
            .map(|(child, _, name)| (child, name))
        {
            parents.push(child);
            found.push((child, name));
        }
    }
    found
}

/// Every live process as (pid, parent pid, name), from /proc/<pid>/stat.
fn live_processes() -> Vec<(i32, i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (name) state ppid …`; the name may hold spaces and parentheses.
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let name = stat[open + 1..close].to_owned();
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next()?;
            let ppid: i32 = rest.next()?.parse().ok()?;
            (state != "Z" && state != "X").then_some((pid, ppid, name))
        })
        .collect()
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The word after `label` on the line of `log` that starts with it (after spaces).
fn printed(log: &str, label: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(label)?;
        rest.split_whitespace().next().map(str::to_owned)
    })
}

#[tokio::test]
async fn tarefa_dev_serves_and_ctrl_c_leaves_no_process_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(binary("tarefa-test"));
    // Port 0: the kernel picks free ports and `tarefa dev` prints which.
    command
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env_remove("TAREFA_REDIS_URL")
        .env_remove("TAREFA_SCHEDULER")
        .env("RUST_LOG", "info");
    let mut dev = Process::start_group("tarefa dev", &mut command, dir.path().join("dev.log"))?;
    let dev_pid = dev.pid().expect("tarefa dev runs").as_raw();
    let (grpc, http, redis) = eventually("tarefa dev to say where it listens", PATIENCE, || {
        let log = dev.log();
        async move {
            let grpc = printed(&log, "scheduler")?;
            let http = printed(&log, "dashboard")?;
            let redis = printed(&log, "redis")?;
            Some((grpc, http, redis))
        }
    })
    .await;
    let grpc = grpc
        .strip_prefix("grpc://")
        .expect("scheduler grpc://addr")
        .to_owned();
    let http = http
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .expect("dashboard http://addr/")
        .to_owned();
    let redis = redis
        .strip_prefix("redis://")
        .expect("redis redis://addr")
        .to_owned();

    // It serves: a task submitted through it runs on its executor, and its dashboard answers.
    let client = tarefa_client::Client::connect(format!("http://{grpc}")).await?;
    let fib = client.submit(Fib { n: 90 }).await?;
    let output = tokio::time::timeout(PATIENCE, fib.wait()).await??;
    assert_eq!(output, "2880067194370816120");
    let done = client.get(fib.id()).await?;
    assert_eq!(done.state(), TaskState::Succeeded);
    assert!(tokio::net::TcpStream::connect(&http).await.is_ok());

    // What it started: its private redis-server at least.
    let children = descendants(dev_pid);
    assert!(
        children
            .iter()
            .any(|(_, name)| name.contains("redis-server")),
        "tarefa dev started no redis-server: {children:?}"
    );
    drop(client);

    // Ctrl-C: it stops everything, exits 0 and leaves nothing running or listening.
    assert!(
        dev.interrupt(tarefa_tests::patience(Duration::from_secs(30)))
            .await,
        "tarefa dev did not exit cleanly on SIGINT:\n{}",
        dev.log()
    );
    let log = dev.log();
    assert!(log.lines().any(|line| line.trim() == "stopped"), "{log}");
    for (pid, name) in &children {
        assert!(
            !alive(*pid),
            "{name} ({pid}), started by tarefa dev, outlived it"
        );
    }
    for addr in [&grpc, &http, &redis] {
        assert!(
            tokio::net::TcpStream::connect(addr.as_str()).await.is_err(),
            "{addr} still accepts connections after tarefa dev stopped"
        );
    }
    Ok(())
}

/// One HTTP/1.1 request (`Connection: close`) to `addr`; the status and the body.
async fn http(method: &str, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(PATIENCE, exchange).await??;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?
        .parse()?;
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked answer: {head}"
    );
    Ok((status, body.to_owned()))
}

/// POSTs the dashboard's cancel action for `task_id`; the task as the API answers it.
async fn cancel_from_dashboard(h: &Harness, task_id: &str) -> Value {
    let path = format!("/api/tasks/{task_id}/cancel");
    let (status, body) = http("POST", &h.scheduler.http_addr, &path)
        .await
        .expect("the dashboard answers");
    assert_eq!(status, 200, "POST {path}: {body}");
    serde_json::from_str(&body).expect("the answer is JSON")
}

#[tokio::test]
async fn the_dashboard_cancels_a_running_and_a_queued_task() -> anyhow::Result<()> {
    // The executor serves only `default`: a task of queue `held` waits, QUEUED.
    let h = Harness::builder()
        .executor_args(&["--queues", "default"])
        .start()
        .await?;
    let running = h.client.submit(Sleep { ms: 600_000 }).await?;
    let queued = h
        .client
        .submit_with(
            Echo(serde_json::json!("never")),
            &SubmitOptions::queue("held"),
        )
        .await?;
    wait_state(&h, running.id(), TaskState::Running).await;
    let waiting = h.client.get(queued.id()).await?;
    assert_eq!(waiting.state(), TaskState::Queued);

    // A waiting task is cancelled at once.
    let answer = cancel_from_dashboard(&h, queued.id()).await;
    assert_eq!(answer["state"], "CANCELLED", "{answer}");
    assert_eq!(answer["can_cancel"], false, "{answer}");
    assert_eq!(answer["can_retry"], true, "{answer}");
    let task = h.client.get(queued.id()).await?;
    assert_eq!(task.state(), TaskState::Cancelled);
    assert!(task.result.is_empty());

    // A running one is flagged, and its executor stops the handler.
    let answer = cancel_from_dashboard(&h, running.id()).await;
    assert!(
        answer["state"] == "RUNNING" || answer["state"] == "CANCELLED",
        "{answer}"
    );
    assert_eq!(answer["cancel_requested"], true, "{answer}");
    let task = wait_state(&h, running.id(), TaskState::Cancelled).await;
    assert!(task.result.is_empty(), "{task:?}");
    assert!(task.last_error.contains("cancel"), "{task:?}");

    // The dashboard's own view agrees.
    for id in [running.id(), queued.id()] {
        let (status, body) =
            http("GET", &h.scheduler.http_addr, &format!("/api/tasks/{id}")).await?;
        assert_eq!(status, 200, "{body}");
        let shown: Value = serde_json::from_str(&body)?;
        assert_eq!(shown["state"], "CANCELLED", "{shown}");
        assert_eq!(shown["can_cancel"], false, "{shown}");
    }
    // Nothing is left running on the executor: the next task starts.
    let echo = h.client.submit(Echo(serde_json::json!("next"))).await?;
    let output = tokio::time::timeout(PATIENCE, echo.wait()).await??;
    assert_eq!(output, serde_json::json!("next"));
    let queues = h.client.list_queues().await?;
    let default = queues
        .iter()
        .find(|q| q.name == "default")
        .expect("queue default");
    assert_eq!(default.running, 0, "{default:?}");
    Ok(())
}
