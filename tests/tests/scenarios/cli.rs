//! The `tarefa` command as a user runs it: the real binary, as a process, against real
//! services, checked by its output and exit code.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tarefa_proto::TaskState;
use tarefa_tests::{Harness, binary, eventually, free_port, patience};

/// What one run of `tarefa` left behind.
#[derive(Debug)]
struct Run {
    /// The exit code.
    code: i32,
    /// Everything it printed on stdout.
    stdout: String,
    /// Everything it printed on stderr.
    stderr: String,
}

impl Run {
    /// Stdout as one JSON value (commands given `--json` print exactly one).
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|error| panic!("stdout is not one JSON value ({error}): {self:?}"))
    }

    /// Asserts the exit code, showing both outputs when it differs.
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:?}");
        self
    }
}

/// Runs `tarefa --scheduler <scheduler> <args>` to the end (killed after a minute, times the
/// patience factor, so a command that hangs fails the test instead of stalling it).
async fn tarefa(scheduler: &str, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(binary("tarefa-test"));
    command
        .arg("--scheduler")
        .arg(scheduler)
        .args(args)
        .env_remove("TAREFA_SCHEDULER")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let within = patience(Duration::from_secs(60));
    let output = tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("tarefa {args:?} still ran after {within:?}"))
        .expect("start the tarefa binary");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `task_id` of a task's (or a submit's) JSON.
fn task_id(json: &Value) -> String {
    json["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task_id in {json}"))
        .to_owned()
}

#[tokio::test]
async fn submit_wait_prints_the_result() {
    let h = Harness::builder().start().await.expect("harness");
    let endpoint = &h.scheduler.endpoint;

    let run = tarefa(endpoint, &["submit", "fib", r#"{"n": 90}"#, "--wait"]).await;
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), r#""2880067194370816120""#, "{run:?}");

    let run = tarefa(
        endpoint,
        &["submit", "fib", r#"{"n": 10}"#, "--wait", "--json"],
    )
    .await;
    let task = run.expect_code(0).json();
    assert_eq!(task["state"], "SUCCEEDED", "{task}");
    assert_eq!(task["result"], "55", "{task}");
    assert_eq!(task["attempt"], 1, "{task}");
}

#[tokio::test]
async fn submit_json_then_get() {
    let h = Harness::builder().start().await.expect("harness");
    let endpoint = &h.scheduler.endpoint;

    let submitted = tarefa(endpoint, &["submit", "fib", r#"{"n": 20}"#, "--json"]).await;
    let submitted = submitted.expect_code(0).json();
    assert!(submitted.is_object(), "{submitted}");
    assert_eq!(submitted["deduplicated"], false, "{submitted}");
    let id = task_id(&submitted);
    assert!(id.starts_with("default:"), "{id}");
    h.wait_final(&id, Duration::from_secs(20)).await;

    let task = tarefa(endpoint, &["get", &id, "--json"]).await;
    let task = task.expect_code(0).json();
    assert_eq!(task["task_id"], id.as_str(), "{task}");
    assert_eq!(task["task_type"], "fib", "{task}");
    assert_eq!(task["queue"], "default", "{task}");
    assert_eq!(task["payload"], serde_json::json!({"n": 20}), "{task}");
    assert_eq!(task["state"], "SUCCEEDED", "{task}");
    assert_eq!(task["result"], "6765", "{task}");

    let table = tarefa(endpoint, &["get", &id]).await;
    table.expect_code(0);
    assert!(
        table.stdout.contains(&format!("task      {id}")),
        "{table:?}"
    );
    assert!(table.stdout.contains("state     SUCCEEDED"), "{table:?}");
    assert!(table.stdout.contains(r#"result    "6765""#), "{table:?}");

    let missing = tarefa(endpoint, &["get", "default:01ARZ3NDEKTSV4RRFFQ69G5FAV"]).await;
    missing.expect_code(1);
    assert!(
        missing.stderr.starts_with("tarefa: scheduler error"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_dead_task_exits_1_is_listed_retried_and_purged() {
    let h = Harness::builder().start().await.expect("harness");
    let endpoint = &h.scheduler.endpoint;
    let fail = [
        "submit",
        "fail",
        r#"{"message": "boom"}"#,
        "--max-attempts",
        "1",
    ];

    let waited = tarefa(endpoint, &[&fail[..], &["--wait"]].concat()).await;
    waited.expect_code(1);
    assert!(waited.stderr.contains("ended DEAD: boom"), "{waited:?}");

    let dead = tarefa(endpoint, &["tasks", "--state", "dead", "--json"]).await;
    let dead = dead.expect_code(0).json();
    let listed = dead
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {dead}"));
    assert_eq!(listed.len(), 1, "{dead}");
    assert_eq!(listed[0]["state"], "DEAD", "{dead}");
    assert_eq!(listed[0]["last_error"], "boom", "{dead}");
    let first = task_id(&listed[0]);

    let watched = tarefa(endpoint, &["watch", &first]).await;
    watched.expect_code(1);
    assert!(watched.stdout.contains("state     DEAD"), "{watched:?}");

    // One task requeued by id: it runs once more and dies again.
    let retried = tarefa(endpoint, &["retry", &first, "--json"]).await;
    let retried = retried.expect_code(0).json();
    assert_eq!(retried["task_id"], first.as_str(), "{retried}");
    // Its state here may already be DEAD again: the executor is that quick.
    let died_again = |id: String, errors: usize| {
        let client = h.client.clone();
        async move {
            eventually(
                &format!("task {id} dead with {errors} errors"),
                Duration::from_secs(20),
                || {
                    let client = client.clone();
                    let id = id.clone();
                    async move {
                        let task = client.get(&id).await.ok()?;
                        (task.state() == TaskState::Dead && task.errors.len() == errors)
                            .then_some(())
                    }
                },
            )
            .await;
        }
    };
    died_again(first.clone(), 2).await;

    // Two more dead ones, then all three requeued at once. They die again at once, which
    // must not keep `--all-dead` requeueing them for ever: each is requeued exactly once.
    let mut ids = vec![first];
    for _ in 0..2 {
        let id = task_id(
            &tarefa(endpoint, &[&fail[..], &["--json"]].concat())
                .await
                .expect_code(0)
                .json(),
        );
        h.wait_final(&id, Duration::from_secs(20)).await;
        ids.push(id);
    }
    let all = tarefa(endpoint, &["retry", "--all-dead", "--json"]).await;
    assert_eq!(
        all.expect_code(0).json(),
        serde_json::json!({"retried": 3}),
        "{all:?}"
    );
    died_again(ids[0].clone(), 3).await;
    died_again(ids[1].clone(), 2).await;
    died_again(ids[2].clone(), 2).await;
    let all = tarefa(endpoint, &["retry", "--all-dead"]).await;
    all.expect_code(0);
    assert_eq!(
        all.stdout.trim(),
        "requeued 3 dead tasks from default",
        "{all:?}"
    );
    died_again(ids[0].clone(), 4).await;
    died_again(ids[1].clone(), 3).await;
    died_again(ids[2].clone(), 3).await;

    let purged = tarefa(endpoint, &["purge-dead", "default"]).await;
    purged.expect_code(0);
    assert_eq!(
        purged.stdout.trim(),
        "purged 3 dead tasks from default",
        "{purged:?}"
    );
    let dead = tarefa(endpoint, &["tasks", "--state", "dead", "--json"]).await;
    assert_eq!(
        dead.expect_code(0).json(),
        serde_json::json!([]),
        "{dead:?}"
    );
    let purged = tarefa(endpoint, &["purge-dead", "default", "--json"]).await;
    assert_eq!(
        purged.expect_code(0).json(),
        serde_json::json!({"queue": "default", "purged": 0}),
        "{purged:?}"
    );
    let nothing = tarefa(endpoint, &["retry", "--all-dead"]).await;
    nothing.expect_code(0);
    assert_eq!(
        nothing.stdout.trim(),
        "requeued 0 dead tasks from default",
        "{nothing:?}"
    );
}

#[tokio::test]
async fn cancel_a_delayed_task() {
    let h = Harness::builder()
        .executors(0)
        .start()
        .await
        .expect("harness");
    let endpoint = &h.scheduler.endpoint;

    let submitted = tarefa(
        endpoint,
        &["submit", "sleep", r#"{"ms": 1}"#, "--delay-ms", "60000"],
    )
    .await;
    submitted.expect_code(0);
    let id = submitted.stdout.trim().to_owned();
    assert!(id.starts_with("default:"), "{submitted:?}");
    let scheduled = tarefa(endpoint, &["get", &id, "--json"]).await;
    assert_eq!(
        scheduled.expect_code(0).json()["state"],
        "SCHEDULED",
        "{scheduled:?}"
    );

    let cancelled = tarefa(endpoint, &["cancel", &id]).await;
    cancelled.expect_code(0);
    assert!(
        cancelled.stdout.contains("state     CANCELLED"),
        "{cancelled:?}"
    );
    let task = tarefa(endpoint, &["get", &id, "--json"]).await;
    assert_eq!(task.expect_code(0).json()["state"], "CANCELLED", "{task:?}");
    // The watch of a cancelled task ends at once, as a failure.
    tarefa(endpoint, &["watch", &id]).await.expect_code(1);
}

#[tokio::test]
async fn pause_and_resume_a_queue() {
    let h = Harness::builder().start().await.expect("harness");
    let endpoint = &h.scheduler.endpoint;
    let paused_of = |queues: Value| {
        queues
            .as_array()
            .and_then(|queues| queues.iter().find(|q| q["name"] == "default"))
            .map(|q| q["paused"].clone())
            .unwrap_or_else(|| panic!("no default queue in {queues}"))
    };

    let paused = tarefa(endpoint, &["pause", "default"]).await;
    paused.expect_code(0);
    assert_eq!(paused.stdout.trim(), "queue default paused", "{paused:?}");
    let queues = tarefa(endpoint, &["queues", "--json"]).await;
    assert_eq!(paused_of(queues.expect_code(0).json()), true, "{queues:?}");
    let table = tarefa(endpoint, &["queues"]).await;
    table.expect_code(0);
    assert!(table.stdout.starts_with("QUEUE"), "{table:?}");
    let row = table.stdout.lines().find(|l| l.starts_with("default "));
    assert!(
        row.is_some_and(|r| r.trim_end().ends_with("yes")),
        "{table:?}"
    );

    // Submitted while paused, it runs once the queue is resumed.
    let submitted = tarefa(endpoint, &["submit", "sleep", r#"{"ms": 1}"#]).await;
    submitted.expect_code(0);
    let id = submitted.stdout.trim().to_owned();

    let resumed = tarefa(endpoint, &["resume", "default", "--json"]).await;
    assert_eq!(
        resumed.expect_code(0).json(),
        serde_json::json!({"queue": "default", "paused": false}),
        "{resumed:?}"
    );
    let queues = tarefa(endpoint, &["queues", "--json"]).await;
    assert_eq!(paused_of(queues.expect_code(0).json()), false, "{queues:?}");
    let task = h.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    let resumed = tarefa(endpoint, &["resume", "default"]).await;
    resumed.expect_code(0);
    assert_eq!(
        resumed.stdout.trim(),
        "queue default resumed",
        "{resumed:?}"
    );
}

#[tokio::test]
async fn submit_many_and_wait_for_them() {
    let h = Harness::builder()
        .executor_args(&["--concurrency", "8"])
        .start()
        .await
        .expect("harness");
    let endpoint = &h.scheduler.endpoint;
    let sleep = ["submit", "sleep", r#"{"ms": 1}"#, "--count", "50", "--wait"];

    let run = tarefa(endpoint, &sleep).await;
    run.expect_code(0);
    assert!(run.stderr.contains("submitted 50 tasks"), "{run:?}");
    assert!(run.stderr.contains("50 succeeded, 0 failed"), "{run:?}");

    let run = tarefa(endpoint, &[&sleep[..], &["--json"]].concat()).await;
    let summary = run.expect_code(0).json();
    assert_eq!(summary["submitted"], 50, "{summary}");
    assert_eq!(summary["succeeded"], 50, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");

    let queues = h.client.list_queues().await.expect("list queues");
    let default = queues.iter().find(|q| q.name == "default");
    assert_eq!(default.map(|q| q.succeeded_total), Some(100), "{queues:?}");
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let h = Harness::builder()
        .executors(0)
        .start()
        .await
        .expect("harness");
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    // Bad arguments are the user's to fix, whether or not the scheduler is up.
    for endpoint in [&h.scheduler.endpoint, &unreachable] {
        let run = tarefa(endpoint, &["submit", "fib", r#"{"n": "#]).await;
        run.expect_code(2);
        assert!(
            run.stderr.contains("the payload is not valid JSON"),
            "{run:?}"
        );
        let run = tarefa(endpoint, &["tasks", "--state", "sleepy"]).await;
        run.expect_code(2);
        assert!(run.stderr.contains("unknown state"), "{run:?}");
        let run = tarefa(endpoint, &["retry"]).await;
        run.expect_code(2);
        assert!(
            run.stderr.contains("give a task id or --all-dead"),
            "{run:?}"
        );
        tarefa(endpoint, &["submit"]).await.expect_code(2);
        tarefa(endpoint, &["no-such-command"]).await.expect_code(2);
    }
    let tasks = tarefa(
        &h.scheduler.endpoint,
        &["tasks", "--state", "queued", "--json"],
    )
    .await;
    assert_eq!(
        tasks.expect_code(0).json(),
        serde_json::json!([]),
        "nothing was submitted"
    );
}

#[tokio::test]
async fn an_unreachable_scheduler_exits_3() {
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["submit", "fib", r#"{"n": 90}"#, "--wait"][..],
        &["get", "default:01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        &["queues"],
    ] {
        let run = tarefa(&unreachable, args).await;
        run.expect_code(3);
        assert!(
            run.stderr.contains("cannot connect to the scheduler"),
            "{run:?}"
        );
    }
}

#[tokio::test]
async fn watch_follows_a_task_to_the_end() {
    let h = Harness::builder().start().await.expect("harness");
    let endpoint = &h.scheduler.endpoint;

    let submitted = tarefa(endpoint, &["submit", "sleep", r#"{"ms": 300}"#]).await;
    submitted.expect_code(0);
    let id = submitted.stdout.trim().to_owned();
    let watched = tarefa(endpoint, &["watch", &id]).await;
    watched.expect_code(0);
    assert!(
        watched.stdout.contains(&format!("task      {id}")),
        "{watched:?}"
    );
    assert!(
        watched.stdout.contains("state     SUCCEEDED"),
        "{watched:?}"
    );
    assert!(
        watched.stderr.contains("SUCCEEDED"),
        "the progress line: {watched:?}"
    );

    let submitted = tarefa(endpoint, &["submit", "sleep", r#"{"ms": 300}"#, "--json"]).await;
    let id = task_id(&submitted.expect_code(0).json());
    let watched = tarefa(endpoint, &["watch", &id, "--json"]).await;
    watched.expect_code(0);
    let updates: Vec<Value> = watched
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let last = updates
        .last()
        .unwrap_or_else(|| panic!("no update: {watched:?}"));
    assert_eq!(last["state"], "SUCCEEDED", "{watched:?}");
    assert!(
        updates.iter().all(|u| u["task_id"] == id.as_str()),
        "{watched:?}"
    );
}
