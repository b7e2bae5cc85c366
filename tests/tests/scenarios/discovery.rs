//! Handler discovery with real processes: Python workers (`tarefa-py-worker module:app`)
//! announce their task types, the executor (no `--handler` flag) routes to live replicas,
//! spreads attempts over them and drops a SIGKILLed one; a type nobody serves waits, then
//! fails as documented. And the asyncio client (`tarefa.aio`) against the real scheduler.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tarefa_client::SubmitOptions;
use tarefa_proto::TaskState;
use tarefa_tests::{Harness, Process, eventually};

use crate::django::{scheduler_address, wait_for_handlers};
use crate::polyglot::{run_python, venv_python};

/// The replicas' module: one App with a slow task (and one for the "late" case).
const REPLICA_APP: &str = r#"
import os
import time

import tarefa

app = tarefa.App()


@app.task(name="replicated.work")
def work(n, ms):
    time.sleep(ms / 1000)
    return {"n": n, "pid": os.getpid()}


@app.task(name="late.arrival")
def late():
    return "served"


@app.task(name="progress.utf8")
def progress_utf8():
    # 2 000 bytes of two-byte characters: cut to 1 024 bytes, never inside a character.
    return tarefa.current_context().progress(0.5, "\u00e9" * 1000)
"#;

/// Starts `tarefa-py-worker replica:app` (the console script) in `dir`.
fn start_replica(python: &Path, dir: &Path, h: &Harness, name: &str) -> Process {
    let script = python.with_file_name("tarefa-py-worker");
    let mut command = Command::new(&script);
    command
        .args(["replica:app", "--scheduler", &scheduler_address(h)])
        .args(["--concurrency", "8", "--ttl", "3"])
        .current_dir(dir)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Process::start(name, &mut command, dir.join(format!("{name}.log")))
        .expect("start tarefa-py-worker")
}

fn pid_of(process: &Process) -> i64 {
    i64::from(process.pid().expect("running").as_raw())
}

fn result_pid(task: &tarefa_proto::Task) -> Option<i64> {
    serde_json::from_slice::<Value>(&task.result).ok()?["pid"].as_i64()
}

#[tokio::test]
async fn discovery_spreads_over_replicas_and_survives_a_sigkill() -> anyhow::Result<()> {
    let python = venv_python().await;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("replica.py"), REPLICA_APP)?;
    let h = Harness::builder()
        .executor_args(&["--concurrency", "16"])
        .start()
        .await?;
    let mut first = start_replica(&python, dir.path(), &h, "replica-1");
    let second = start_replica(&python, dir.path(), &h, "replica-2");
    wait_for_handlers(&h, "replicated.work", 2).await;
    let (first_pid, second_pid) = (pid_of(&first), pid_of(&second));

    let options = SubmitOptions {
        max_attempts: Some(10),
        backoff_initial: Some(Duration::from_millis(50)),
        backoff_max: Some(Duration::from_millis(200)),
        ..SubmitOptions::default()
    };
    let submit = |n: usize| {
        let payload = serde_json::json!({"args": [n, 300]})
            .to_string()
            .into_bytes();
        let request = options.request("replicated.work", payload);
        let client = h.client.clone();
        async move { client.submit_raw(request).await.map(|r| r.task_id) }
    };
    let mut before = Vec::new();
    for n in 0..60 {
        before.push(submit(n).await?);
    }
    // Both replicas take work.
    let client = h.client.clone();
    let ids = before.clone();
    eventually(
        "both replicas to run tasks",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let ids = ids.clone();
            async move {
                let mut pids = HashSet::new();
                for id in &ids {
                    if let Some(pid) = client.get(id).await.ok().as_ref().and_then(result_pid) {
                        pids.insert(pid);
                    }
                }
                (pids.contains(&first_pid) && pids.contains(&second_pid)).then_some(())
            }
        },
    )
    .await;

    // SIGKILL one while tasks are running on it: its attempts fail, are retried, land on the
    // other; nothing is lost.
    first.kill();
    let mut after = Vec::new();
    for n in 60..80 {
        after.push(submit(n).await?);
    }
    let mut retried = 0;
    for id in before.iter().chain(&after) {
        let task = h.wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(
            task.state(),
            TaskState::Succeeded,
            "{id}: {} {:?}",
            task.last_error,
            task.errors
        );
        if !task.errors.is_empty() {
            retried += 1;
        }
    }
    for id in &after {
        let task = h.client.get(id).await?;
        assert_eq!(
            result_pid(&task),
            Some(second_pid),
            "after the kill only the survivor serves"
        );
    }
    // The dead replica leaves the announcements when its heartbeat lapses (ttl 3 s).
    let live = wait_for_handlers(&h, "replicated.work", 1).await;
    assert!(live[0].address.starts_with("grpc://127.0.0.1:"), "{live:?}");
    // The kill came while attempts ran on it (60 tasks of 300 ms over 16 slots had barely
    // started): those attempts failed and were retried.
    assert!(retried > 0, "no attempt failed with the SIGKILLed replica");
    eprintln!("{retried} tasks were retried after the SIGKILL");
    drop(second);
    Ok(())
}

#[tokio::test]
async fn discovery_a_type_without_a_live_handler_waits_then_fails() -> anyhow::Result<()> {
    let python = venv_python().await;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("replica.py"), REPLICA_APP)?;
    let h = Harness::builder()
        .executor_args(&["--discovery-wait-ms", "300", "--no-handler-retries", "5"])
        .start()
        .await?;

    // Nobody serves it: handed back, uncharged, 5 times (0.5 s doubling); then DEAD.
    let options = SubmitOptions {
        max_attempts: Some(2),
        backoff_initial: Some(Duration::from_millis(50)),
        ..SubmitOptions::default()
    };
    let nobody = h
        .client
        .submit_raw(options.request("nobody.home", b"{}".to_vec()))
        .await?;
    let task = h.wait_final(&nobody.task_id, Duration::from_secs(60)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(
        task.attempt, 0,
        "waiting for a handler was charged as an attempt"
    );
    assert!(
        task.last_error
            .contains("no handler for task type \"nobody.home\""),
        "{}",
        task.last_error
    );

    // Submitted before any handler exists: handed back until one announces itself, then runs.
    let options = SubmitOptions {
        max_attempts: Some(100),
        backoff_initial: Some(Duration::from_millis(100)),
        backoff_max: Some(Duration::from_millis(200)),
        ..SubmitOptions::default()
    };
    let late = h
        .client
        .submit_raw(options.request("late.arrival", b"{}".to_vec()))
        .await?;
    let mut worker = start_replica(&python, dir.path(), &h, "late-worker");
    let task = h.wait_final(&late.task_id, Duration::from_secs(60)).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{}", task.last_error);
    assert_eq!(serde_json::from_slice::<Value>(&task.result)?, "served");

    // A progress message over the scheduler's 1 024-byte limit is cut by UTF-8 bytes, at a
    // character boundary, and recorded.
    let progress = h
        .client
        .submit_raw(SubmitOptions::default().request("progress.utf8", b"{}".to_vec()))
        .await?;
    let task = h
        .wait_final(&progress.task_id, Duration::from_secs(60))
        .await;
    assert_eq!(task.state(), TaskState::Succeeded, "{}", task.last_error);
    assert_eq!(
        serde_json::from_slice::<Value>(&task.result)?,
        true,
        "recorded"
    );
    assert_eq!(task.progress_message, "\u{e9}".repeat(512));

    // SIGTERM: withdraws itself and exits 0.
    assert!(
        worker
            .terminate(tarefa_tests::patience(Duration::from_secs(30)))
            .await,
        "{}",
        worker.log()
    );
    wait_for_handlers(&h, "late.arrival", 0).await;
    Ok(())
}

/// The asyncio client: submit, wait, watch, cancel, errors, 1 000 concurrent submits.
const AIO_SCRIPT: &str = r#"
import asyncio
import json
import sys

import tarefa
import tarefa.aio


async def main():
    out = {}
    async with tarefa.aio.AsyncClient(sys.argv[1]) as client:
        fib = await client.submit("fib", {"n": 90})
        out["fib"] = await fib.wait(timeout=60)

        slow = await client.submit("sleep", {"ms": 20000})
        states = []
        async for task in client.watch(slow.id, timeout=60):
            states.append(tarefa.state_name(task.state))
            if task.state == tarefa.pb.TASK_STATE_RUNNING and task.progress > 0:
                break
        out["watched"] = states
        await slow.cancel()
        try:
            await slow.wait(timeout=60)
            out["cancelled"] = "no"
        except tarefa.TaskFailed as failed:
            out["cancelled"] = failed.state

        try:
            await client.get("default:01J00000000000000000000000")
        except tarefa.NotFound as error:
            out["not_found"] = type(error).__name__
        try:
            await client.submit("")
        except tarefa.InvalidArgument as error:
            out["invalid"] = error.details()

        # The token travels as "authorization: Bearer <token>" on every call (the scheduler
        # here does not ask for one, so it is simply sent along).
        async with tarefa.aio.AsyncClient(sys.argv[1], token="s3cret") as authed:
            out["token_metadata"] = ("authorization", "Bearer s3cret") in (authed._metadata() or [])
            out["with_token"] = (await (await authed.submit("fib", {"n": 10})).wait(timeout=60))
        sync_client = tarefa.Client(sys.argv[1], token="s3cret")
        out["sync_with_token"] = sync_client.submit("fib", {"n": 11}).wait(timeout=60)
        sync_client.close()

        handles = await asyncio.gather(*(client.submit("echo", {"i": i}) for i in range(1000)))
        out["submitted"] = len({h.id for h in handles})
        limit = asyncio.Semaphore(100)

        async def result(handle):
            async with limit:
                return await handle.wait(timeout=120)

        results = await asyncio.gather(*(result(h) for h in handles))
        out["results_ok"] = sorted(r["i"] for r in results) == list(range(1000))
    print(json.dumps(out))


asyncio.run(main())
"#;

#[tokio::test]
async fn aio_client_submits_waits_watches_cancels_and_submits_1000_at_once() -> anyhow::Result<()> {
    let python = venv_python().await;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("aio_client.py");
    std::fs::write(&script, AIO_SCRIPT)?;
    let h = Harness::builder()
        .executor_args(&["--concurrency", "64"])
        .start()
        .await?;
    let output = run_python(
        &python,
        &[script.to_str().expect("utf-8"), &scheduler_address(&h)],
        Duration::from_secs(180),
    )
    .await;
    let out: Value =
        serde_json::from_str(output.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {output}"));
    assert_eq!(out["fib"], "2880067194370816120");
    let watched: Vec<&str> = out["watched"]
        .as_array()
        .expect("states")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(watched.last(), Some(&"RUNNING"), "{watched:?}");
    assert_eq!(out["cancelled"], "CANCELLED");
    assert_eq!(out["not_found"], "NotFound");
    assert!(
        out["invalid"].as_str().unwrap_or("").contains("task_type"),
        "{out}"
    );
    assert_eq!(out["token_metadata"], true);
    assert_eq!(out["with_token"], "55");
    assert_eq!(out["sync_with_token"], "89");
    assert_eq!(out["submitted"], 1000);
    assert_eq!(out["results_ok"], true);
    let queues = h.client.list_queues().await?;
    let default = queues
        .iter()
        .find(|q| q.name == "default")
        .expect("default");
    assert!(default.submitted_total >= 1004, "{default:?}");
    Ok(())
}

#[tokio::test]
async fn discovery_off_fails_a_type_without_a_handler_at_once() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executor_args(&["--discovery", "false", "--no-handler-retries", "0"])
        .start()
        .await?;
    let unknown = h
        .client
        .submit_raw(SubmitOptions::default().request("nobody.home", b"{}".to_vec()))
        .await?;
    let task = h
        .wait_final(&unknown.task_id, Duration::from_secs(60))
        .await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(
        task.attempt, 0,
        "no handler here is never charged as an attempt"
    );
    assert!(
        task.last_error.contains("no handler for task type"),
        "{}",
        task.last_error
    );
    Ok(())
}
