//! Any language in, any language out: Python producers and handlers (the `tarefa` package in
//! `clients/python`, installed into a venv under the target directory) against the real
//! scheduler and executors, and remote handlers reached over gRPC and HTTP.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use tarefa_client::SubmitOptions;
use tarefa_proto::{self as pb, TaskState};
use tarefa_tests::{
    Harness, Process, eventually, free_port, run_command, target_dir, trace_id_of,
    wait_for_listener, workspace_root,
};

/// The venv's Python, or why it could not be made; made once per test binary.
static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();

const INSTALL_PYTHON: &str = "the polyglot tests need python3 with venv and pip: install them \
     (Debian/Ubuntu: apt-get install python3 python3-venv python3-pip; macOS: brew install python), \
     or point TAREFA_TEST_PYTHON at a python3";

/// The Python of a venv with `pip install ./clients/python[dev,django]` done (grpcio-tools for
/// the stubs check, Django for the Django scenarios), made on first use and reused while
/// `clients/python` is unchanged.
pub(crate) async fn venv_python() -> PathBuf {
    tokio::task::spawn_blocking(|| VENV.get_or_init(make_venv).clone())
        .await
        .expect("venv set-up panicked")
        .unwrap_or_else(|error| panic!("{error}"))
}

/// A fingerprint of the package's sources, to know when the venv's copy is stale.
fn package_stamp(dir: &Path, hasher: &mut DefaultHasher) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read clients/python")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "build" || name == "__pycache__" || name.ends_with(".egg-info") {
            continue;
        }
        name.hash(hasher);
        if path.is_dir() {
            package_stamp(&path, hasher);
        } else {
            std::fs::read(&path).unwrap_or_default().hash(hasher);
        }
    }
}

fn copy_package(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "build" || name == "__pycache__" || name.ends_with(".egg-info") {
            continue;
        }
        if path.is_dir() {
            copy_package(&path, &to.join(name))?;
        } else {
            std::fs::copy(&path, to.join(name))?;
        }
    }
    Ok(())
}

fn make_venv() -> Result<PathBuf, String> {
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    // Other test runs sharing the target directory wait here while one builds the venv.
    let lock_file = File::create(target.join("python-venv.lock")).map_err(|e| e.to_string())?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock the python venv: {e}"))?;
    let venv = target.join("python-venv");
    let python = venv.join("bin").join("python");
    let package = workspace_root().join("clients").join("python");
    let mut hasher = DefaultHasher::new();
    package_stamp(&package, &mut hasher);
    let stamp = format!("{:016x}\n", hasher.finish());
    let stamp_file = venv.join(".tarefa-stamp");
    let usable = python.exists()
        && run_command(
            Command::new(&python).args(["-c", "import grpc, grpc_tools, google.protobuf, django"]),
            "the venv's python",
        )
        .is_ok();
    if usable && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(python);
    }
    if !usable {
        let base = std::env::var("TAREFA_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        run_command(Command::new(&base).arg("--version"), &base)
            .map_err(|e| format!("{INSTALL_PYTHON}\n({e})"))?;
        let _ = std::fs::remove_dir_all(&venv);
        run_command(
            Command::new(&base).arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )
        .map_err(|e| format!("{INSTALL_PYTHON}\n({e})"))?;
    }
    // pip builds in the source tree; build a private copy so concurrent runs do not collide
    // and the checkout stays clean.
    let copy = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = copy.path().join("python");
    copy_package(&package, &source).map_err(|e| format!("cannot copy clients/python: {e}"))?;
    let pip = |args: &[&str]| {
        let mut command = Command::new(&python);
        command
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
            .args(args);
        command
    };
    let with_dev = format!("{}[dev,django]", source.display());
    run_command(
        &mut pip(&[&with_dev]),
        "pip install ./clients/python[dev,django]",
    )?;
    let plain = source.display().to_string();
    run_command(
        &mut pip(&["--force-reinstall", "--no-deps", &plain]),
        "pip install ./clients/python",
    )?;
    std::fs::write(&stamp_file, stamp).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Runs a Python script to completion (killed if it outlives `within`) and returns its stdout;
/// panics with its output if it fails.
pub(crate) async fn run_python(python: &Path, args: &[&str], within: Duration) -> String {
    let mut command = tokio::process::Command::new(python);
    command.args(args).env("PYTHONUNBUFFERED", "1");
    tarefa_tests::run_to_completion(command, &format!("python {args:?}"), within).await
}

/// Runs a producer script with two arguments, `h`'s scheduler and an address nothing listens
/// on, and parses the one JSON object it prints.
async fn run_producer(python: &Path, script: &Path, h: &Harness, within: Duration) -> Value {
    let down = format!("127.0.0.1:{}", free_port());
    run_producer_with(python, script, h, &down, within).await
}

/// [`run_producer`] with `second` as the script's second argument.
async fn run_producer_with(
    python: &Path,
    script: &Path,
    h: &Harness,
    second: &str,
    within: Duration,
) -> Value {
    let scheduler = h
        .scheduler
        .endpoint
        .trim_start_matches("http://")
        .to_owned();
    let output = run_python(
        python,
        &[script.to_str().expect("utf-8"), &scheduler, second],
        within,
    )
    .await;
    serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("producer output is not JSON ({e}): {output}"))
}

/// The task ids a producer printed under `key`.
fn producer_ids(out: &Value, key: &str) -> Vec<String> {
    out[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key}: {out}"))
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect()
}

/// Starts a long-running Python script that listens on `port`.
pub(crate) async fn start_python(
    python: &Path,
    name: &str,
    args: &[&str],
    port: u16,
    logs: &Path,
) -> Process {
    let mut command = Command::new(python);
    command.args(args).env("PYTHONUNBUFFERED", "1");
    let process =
        Process::start(name, &mut command, logs.join(format!("{name}.log"))).expect("start python");
    if let Err(error) = wait_for_listener(port, Duration::from_secs(30)).await {
        panic!("{name} did not listen: {error}\n{}", process.log());
    }
    process
}

/// The milliseconds between an attempt's failure and the start of the next one.
fn retry_gap_ms(task: &pb::Task) -> u64 {
    let failed = task.errors.first().expect("a failed attempt").at_ms;
    task.started_at_ms.saturating_sub(failed)
}

/// Task handlers for the test, in Python: a retry with `after`, a permanent failure, an
/// exception, and a look at what the executor sent (context, trace, deadline).
const TEST_HANDLER: &str = r#"
import sys
import tarefa

def flaky(args, context):
    if context.attempt == 1:
        raise tarefa.Retry("not yet", after=1)
    recorded = context.progress(0.5, "halfway")
    return {
        "progress_recorded": recorded,
        "attempt": context.attempt,
        "max_attempts": context.max_attempts,
        "task_id": context.task_id,
        "task_type": context.task_type,
        "queue": context.queue,
        "headers": dict(context.headers),
        "traceparent": context.traceparent,
        "deadline_ms": context.deadline_ms,
        "time_remaining": context._grpc_context.time_remaining(),
        "args": args,
    }

def reject(args):
    raise tarefa.Fail("rejected: " + args["why"])

def explode(args):
    raise ValueError("boom %d" % args["n"])

tarefa.serve(
    {"py.flaky": flaky, "py.reject": reject, "py.raise": explode},
    port=int(sys.argv[1]),
    scheduler=sys.argv[2],
)
"#;

/// A Python producer exercising the client API; prints one JSON object.
const TEST_PRODUCER: &str = r#"
import json
import sys
import tarefa

client = tarefa.Client(sys.argv[1])
out = {}

def outcome(handle):
    try:
        return {"id": handle.id, "unexpected_result": handle.wait(timeout=60)}
    except tarefa.TaskFailed as failed:
        return {"id": handle.id, "state": failed.state, "error": failed.error}

words = client.submit("word_count", {"text": "to be or not to be"}, idempotency_key="wc-1")
again = client.submit("word_count", {"text": "other"}, idempotency_key="wc-1")
out["word_count"] = {
    "id": words.id,
    "result": words.wait(timeout=60),
    "again_id": again.id,
    "deduplicated": again.deduplicated,
}
fib = client.submit("fib", {"n": 90}, queue="default")
out["fib"] = {"id": fib.id, "result": fib.wait(timeout=60)}
flaky = client.submit("py.flaky", {"x": 1}, max_attempts=3, timeout=20, headers={"tenant": "acme"})
out["flaky"] = {"id": flaky.id, "result": flaky.wait(timeout=60)}

reject = client.submit("py.reject", {"why": "bad input"})
out["reject"] = outcome(reject)
out["reject"]["retried_state"] = tarefa.state_name(client.retry(reject.id).state)
out["reject_again"] = outcome(reject)
out["raise"] = outcome(client.submit("py.raise", {"n": 7}, max_attempts=2))

delayed = client.submit("fib", {"n": 10}, delay=60)
out["delayed"] = {"id": delayed.id, "state": tarefa.state_name(delayed.get().state)}
delayed.cancel()
out["delayed"]["after_cancel"] = outcome(delayed)

slow = client.submit("sleep", {"ms": 10000})
try:
    slow.wait(timeout=0.3)
    out["timeout"] = "no timeout"
except TimeoutError:
    out["timeout"] = "TimeoutError"
slow.cancel()
print(json.dumps(out))
"#;

/// An HTTP task handler on the standard library only: each path answers one way.
const HTTP_HANDLER: &str = r#"
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body, headers=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        payload = self.rfile.read(int(self.headers.get("content-length", "0")))
        attempt = int(self.headers.get("tarefa-attempt", "0"))
        if self.path == "/ok":
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.reply(200, json.dumps({"headers": headers, "payload": json.loads(payload)}))
        elif self.path == "/reject":
            self.reply(422, "no such image")
        elif self.path == "/flaky":
            if attempt == 1:
                self.reply(500, "database is down")
            else:
                self.reply(200, json.dumps({"attempt": attempt}))
        elif self.path == "/busy":
            if attempt == 1:
                self.reply(503, "busy", [("retry-after", "1")])
            else:
                self.reply(200, json.dumps({"attempt": attempt}))
        else:
            self.reply(500, "always broken")

    def log_message(self, format, *args):
        sys.stderr.write("%s\n" % (format % args))

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

#[tokio::test]
async fn python_stubs_match_the_proto() {
    let python = venv_python().await;
    let script = workspace_root().join("clients/python/check_stubs.py");
    let output = run_python(
        &python,
        &[script.to_str().expect("utf-8 path")],
        Duration::from_secs(60),
    )
    .await;
    assert!(output.contains("stubs match"), "{output}");
}

#[tokio::test]
async fn python_producers_and_grpc_handlers() -> anyhow::Result<()> {
    let python = venv_python().await;
    let logs = tempfile::tempdir()?;
    let root = workspace_root();
    let example_handler = root.join("examples/python/handler.py");
    let example_producer = root.join("examples/python/producer.py");
    let test_handler = logs.path().join("test_handler.py");
    let test_producer = logs.path().join("test_producer.py");
    std::fs::write(&test_handler, TEST_HANDLER)?;
    std::fs::write(&test_producer, TEST_PRODUCER)?;

    let (example_port, test_port, down_port) = (free_port(), free_port(), free_port());
    let grpc = |port: u16| format!("grpc://127.0.0.1:{port}");
    let routes = [
        format!("word_count={}", grpc(example_port)),
        // Several types in one flag, comma-separated, sharing one channel.
        format!("py.flaky={0},py.reject={0},py.raise={0}", grpc(test_port)),
        // Nothing listens there: attempts fail and are retried, the executor is not stuck.
        format!("py.down={}", grpc(down_port)),
    ];
    let mut args = vec!["--concurrency", "8"];
    for route in &routes {
        args.extend(["--handler", route.as_str()]);
    }
    let h = Harness::builder().executor_args(&args).start().await?;
    let scheduler = h
        .scheduler
        .endpoint
        .trim_start_matches("http://")
        .to_owned();
    // The handlers start after the services: the executor connects to them lazily, and the
    // test handler reports progress to the scheduler.
    let _example = start_python(
        &python,
        "example-handler",
        &[
            example_handler.to_str().expect("utf-8"),
            "--port",
            &example_port.to_string(),
        ],
        example_port,
        logs.path(),
    )
    .await;
    let _test = start_python(
        &python,
        "test-handler",
        &[
            test_handler.to_str().expect("utf-8"),
            &test_port.to_string(),
            &scheduler,
        ],
        test_port,
        logs.path(),
    )
    .await;

    // The examples, as a user runs them.
    let output = run_python(
        &python,
        &[
            example_producer.to_str().expect("utf-8"),
            "--scheduler",
            &scheduler,
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(output.contains("fib(90) = 2880067194370816120"), "{output}");
    assert!(output.contains("word_count = 11 words"), "{output}");
    assert!(
        output.contains("[['the', 3]"),
        "the most common word first: {output}"
    );
    assert!(
        output.contains("bad word_count ended DEAD: expected {\"text\": \"...\"}"),
        "{output}"
    );

    // The client API from Python, checked from Rust too.
    let output = run_python(
        &python,
        &[test_producer.to_str().expect("utf-8"), &scheduler],
        Duration::from_secs(120),
    )
    .await;
    let out: Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("producer output is not JSON ({e}): {output}"));

    let words = &out["word_count"];
    assert_eq!(words["result"]["words"], 6, "{words}");
    assert_eq!(words["result"]["top"][0], serde_json::json!(["to", 2]));
    assert_eq!(words["again_id"], words["id"]);
    assert_eq!(words["deduplicated"], true);
    let id = words["id"].as_str().expect("id");
    let task = h.client.get(id).await?;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.task_type, "word_count");
    let result: Value = serde_json::from_slice(&task.result)?;
    assert_eq!(result, words["result"]);

    assert_eq!(out["fib"]["result"], "2880067194370816120");
    let task = h.client.get(out["fib"]["id"].as_str().expect("id")).await?;
    assert_eq!(task.state(), TaskState::Succeeded);

    let flaky = &out["flaky"]["result"];
    let id = out["flaky"]["id"].as_str().expect("id");
    let task = h.client.get(id).await?;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.attempt, 2);
    assert_eq!(flaky["attempt"], 2);
    assert_eq!(flaky["max_attempts"], 3);
    assert_eq!(flaky["task_id"], id);
    assert_eq!(flaky["task_type"], "py.flaky");
    assert_eq!(flaky["queue"], "default");
    assert_eq!(flaky["headers"]["tenant"], "acme");
    assert_eq!(flaky["args"]["x"], 1);
    assert_eq!(
        flaky["progress_recorded"], true,
        "ReportProgress from Python"
    );
    // The message Python reported stays; a finished task's progress reads as complete.
    assert_eq!(
        (task.progress, task.progress_message.as_str()),
        (1.0, "halfway")
    );
    assert_eq!(task.errors.len(), 1, "{:?}", task.errors);
    assert_eq!(task.errors[0].message, "not yet");
    // `Retry(after=1)` replaced the backoff (1 s initial, jittered down to as little as 0).
    assert!(
        retry_gap_ms(&task) >= 900,
        "retried after {} ms",
        retry_gap_ms(&task)
    );
    // The deadline is the task's timeout (20 s), carried by the call and the request.
    let remaining = flaky["time_remaining"].as_f64().expect("time_remaining");
    assert!(
        remaining > 0.0 && remaining <= 20.5,
        "time remaining {remaining}"
    );
    let deadline_ms = flaky["deadline_ms"].as_u64().expect("deadline_ms");
    assert!(
        deadline_ms > task.started_at_ms && deadline_ms <= task.started_at_ms + 21_000,
        "deadline {deadline_ms} for an attempt started at {}",
        task.started_at_ms
    );
    // The executor's attempt span travelled to the Python handler: same trace as the task.
    let traceparent = flaky["traceparent"].as_str().expect("traceparent");
    assert!(!task.trace_id.is_empty(), "the task has a trace id");
    assert_eq!(trace_id_of(traceparent), task.trace_id);

    let reject = &out["reject"];
    assert_eq!(reject["state"], "DEAD", "{reject}");
    assert_eq!(reject["error"], "rejected: bad input");
    // RetryTask requeued it (an executor may have taken it again already), and it failed again.
    assert!(
        ["QUEUED", "RUNNING", "DEAD"].contains(&reject["retried_state"].as_str().unwrap_or("")),
        "{reject}"
    );
    assert_eq!(out["reject_again"]["state"], "DEAD");
    let reject_id = reject["id"].as_str().expect("id");
    let task = h.client.get(reject_id).await?;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(task.attempt, 1, "a permanent failure is not retried");
    let runs = h.executors[0]
        .log()
        .lines()
        .filter(|line| line.contains(reject_id) && line.contains("failed permanently"))
        .count();
    assert_eq!(runs, 2, "ran once, then once more after RetryTask");

    let raised = &out["raise"];
    assert_eq!(raised["state"], "DEAD", "{raised}");
    assert_eq!(raised["error"], "ValueError: boom 7");
    let task = h.client.get(raised["id"].as_str().expect("id")).await?;
    assert_eq!(task.attempt, 2, "an exception is retried");

    assert_eq!(out["delayed"]["state"], "SCHEDULED");
    assert_eq!(out["delayed"]["after_cancel"]["state"], "CANCELLED");
    assert_eq!(out["timeout"], "TimeoutError");

    // An unreachable gRPC handler: a failed attempt, retried, then DEAD.
    let options = SubmitOptions {
        max_attempts: Some(2),
        backoff_initial: Some(Duration::from_millis(50)),
        ..SubmitOptions::default()
    };
    let down = h
        .client
        .submit_raw(options.request("py.down", b"{}".to_vec()))
        .await?;
    let task = h.wait_final(&down.task_id, Duration::from_secs(60)).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(task.attempt, 2);
    assert!(
        task.last_error
            .contains(&format!("grpc://127.0.0.1:{down_port}")),
        "{}",
        task.last_error
    );
    // And the executor still runs tasks.
    let f = h
        .client
        .submit(tarefa_client::builtin::Fib { n: 20 })
        .await?
        .wait()
        .await?;
    assert_eq!(f, "6765");
    Ok(())
}

#[tokio::test]
async fn http_handlers_succeed_fail_and_retry_by_status() -> anyhow::Result<()> {
    let python = venv_python().await;
    let logs = tempfile::tempdir()?;
    let script = logs.path().join("http_handler.py");
    std::fs::write(&script, HTTP_HANDLER)?;
    let (port, down_port) = (free_port(), free_port());
    let _server = start_python(
        &python,
        "http-handler",
        &[script.to_str().expect("utf-8"), &port.to_string()],
        port,
        logs.path(),
    )
    .await;
    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    let routes = [
        format!("http.ok={}", url("ok")),
        format!("http.reject={}", url("reject")),
        format!("http.flaky={}", url("flaky")),
        format!("http.busy={}", url("busy")),
        format!("http.broken={}", url("broken")),
        format!("http.down=http://127.0.0.1:{down_port}/nothing"),
    ];
    let mut args = Vec::new();
    for route in &routes {
        args.extend(["--handler", route.as_str()]);
    }
    let h = Harness::builder().executor_args(&args).start().await?;
    let options = SubmitOptions {
        max_attempts: Some(3),
        backoff_initial: Some(Duration::from_millis(50)),
        backoff_max: Some(Duration::from_millis(50)),
        ..SubmitOptions::default()
    };
    let submit = |task_type: &str, max_attempts: u32| {
        let mut request = options.request(task_type, br#"{"image": "cat.png"}"#.to_vec());
        request.max_attempts = max_attempts;
        let client = h.client.clone();
        async move { client.submit_raw(request).await.map(|r| r.task_id) }
    };
    let ok = submit("http.ok", 3).await?;
    let reject = submit("http.reject", 3).await?;
    let flaky = submit("http.flaky", 3).await?;
    let busy = submit("http.busy", 3).await?;
    let broken = submit("http.broken", 2).await?;
    let down = submit("http.down", 2).await?;
    let within = Duration::from_secs(60);

    // 2xx: the body is the result; the request carried the task's context and trace.
    let task = h.wait_final(&ok, within).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{}", task.last_error);
    let result: Value = serde_json::from_slice(&task.result)?;
    let headers = &result["headers"];
    assert_eq!(result["payload"]["image"], "cat.png");
    assert_eq!(headers["tarefa-task-id"], ok.as_str());
    assert_eq!(headers["tarefa-attempt"], "1");
    assert_eq!(headers["tarefa-task-type"], "http.ok");
    assert_eq!(headers["tarefa-queue"], "default");
    assert_eq!(headers["content-type"], "application/json");
    let traceparent = headers["traceparent"].as_str().expect("traceparent");
    assert_eq!(trace_id_of(traceparent), task.trace_id);

    // 4xx: permanent, no retry.
    let task = h.wait_final(&reject, within).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(task.attempt, 1);
    assert!(
        task.last_error.contains("422") && task.last_error.contains("no such image"),
        "{}",
        task.last_error
    );

    // 5xx: retried.
    let task = h.wait_final(&flaky, within).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{}", task.last_error);
    assert_eq!(task.attempt, 2);
    assert!(
        task.errors[0].message.contains("500") && task.errors[0].message.contains("database"),
        "{:?}",
        task.errors
    );
    assert_eq!(serde_json::from_slice::<Value>(&task.result)?["attempt"], 2);

    // 503 with Retry-After: 1 waits a second, not the 50 ms backoff.
    let task = h.wait_final(&busy, within).await;
    assert_eq!(task.state(), TaskState::Succeeded, "{}", task.last_error);
    assert_eq!(task.attempt, 2);
    assert!(
        retry_gap_ms(&task) >= 900,
        "retried after {} ms",
        retry_gap_ms(&task)
    );

    // Always 5xx: DEAD after the last attempt.
    let task = h.wait_final(&broken, within).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(task.attempt, 2);
    assert!(
        task.last_error.contains("always broken"),
        "{}",
        task.last_error
    );

    // Connection refused: retried, then DEAD.
    let task = h.wait_final(&down, within).await;
    assert_eq!(task.state(), TaskState::Dead);
    assert_eq!(task.attempt, 2);
    assert!(
        task.last_error.contains("cannot reach"),
        "{}",
        task.last_error
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_handler_flag_stops_the_executor_at_start_up() {
    let output = Command::new(tarefa_tests::binary("tarefa-executor-test"))
        .args(["--handler", "resize=ftp://example.invalid/x"])
        .output()
        .expect("run tarefa-executor");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("resize=ftp://example.invalid/x") && stderr.contains("grpc://"),
        "{stderr}"
    );
}

/// The producer's batch and non-blocking submits: `submit_many` (one `SubmitTasks`), and
/// `submit_nowait` futures kept in flight by one thread, with errors as `tarefa` exceptions.
const BATCH_AND_NOWAIT_PRODUCER: &str = r#"
import json
import sys
import threading

import grpc
import tarefa

scheduler, down = sys.argv[1], sys.argv[2]
out = {}
client = tarefa.Client(scheduler)

# submit_many: one call, handles in order; every task runs.
handles = client.submit_many(client.request("echo", {"i": i}) for i in range(50))
out["many_ids"] = [h.id for h in handles]
out["many_results"] = [h.wait(timeout=120)["i"] for h in handles]
out["many_empty"] = client.submit_many([])

# One bad task fails the whole batch, naming it; the batch limit (--max-batch 60 here).
try:
    client.submit_many([client.request("echo", {"ok": True}, queue="all_or_none"),
                        client.request("bad type!", {}, queue="all_or_none")])
    out["many_invalid"] = "accepted"
except tarefa.InvalidArgument as error:
    out["many_invalid"] = error.details()
try:
    client.submit_many([client.request("echo", i) for i in range(61)])
    out["many_too_big"] = "accepted"
except tarefa.ResourceExhausted as error:
    out["many_too_big"] = error.details()

# submit_nowait: 500 submits in flight from this one thread, resolved in order.
futures = [client.submit_nowait("echo", {"n": n}) for n in range(500)]
nowait = [f.result(timeout=60) for f in futures]
out["nowait_ids"] = [h.id for h in nowait]
out["nowait_types"] = sorted({type(h).__name__ for h in nowait})
out["nowait_done"] = all(f.done() for f in futures)
out["nowait_results"] = [nowait[n].wait(timeout=120)["n"] for n in (0, 249, 499)]

# A refused submit: the future holds the package's exception, like the blocking call.
bad = client.submit_nowait("echo", {}, queue="no spaces allowed")
try:
    bad.result(timeout=60)
    out["nowait_invalid"] = "accepted"
except tarefa.InvalidArgument as error:
    out["nowait_invalid"] = {
        "details": error.details(),
        "rpc_error": isinstance(error, grpc.RpcError),
        "code": error.code().name,
    }
out["nowait_exception"] = type(bad.exception()).__name__
try:
    client.submit("echo", {}, queue="no spaces allowed")
except tarefa.InvalidArgument as error:
    out["blocking_invalid"] = error.details()

# Callbacks run once the answer is in; an already finished future calls back at once.
called = threading.Event()
client.submit_nowait("echo", "callback").add_done_callback(lambda f: called.set())
out["callback"] = called.wait(60)
late = []
bad.add_done_callback(lambda f: late.append(type(f.exception()).__name__))
out["late_callback"] = late

# A batch in flight, too.
batch = client.submit_many_nowait(client.request("echo", {"b": b}) for b in range(5))
out["many_nowait"] = [h.wait(timeout=120)["b"] for h in batch.result(timeout=60)]

# Nothing listening: Unavailable through the future, as from the blocking call.
with tarefa.Client(down, timeout=5) as nobody:
    try:
        nobody.submit_nowait("echo", {}).result(timeout=60)
        out["down"] = "accepted"
    except tarefa.Unavailable as error:
        out["down"] = type(error).__name__
client.close()
print(json.dumps(out))
"#;

#[tokio::test]
async fn python_submit_many_and_nowait_submits() -> anyhow::Result<()> {
    let python = venv_python().await;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("batch_and_nowait.py");
    std::fs::write(&script, BATCH_AND_NOWAIT_PRODUCER)?;
    let h = Harness::builder()
        .scheduler_args(&["--max-batch", "60"])
        .executor_args(&["--concurrency", "32"])
        .start()
        .await?;
    let out = run_producer(&python, &script, &h, Duration::from_secs(180)).await;
    let ids = |key: &str| producer_ids(&out, key);
    let many = ids("many_ids");
    assert_eq!(many.len(), 50);
    assert_eq!(
        out["many_results"],
        serde_json::json!((0..50).collect::<Vec<_>>())
    );
    assert_eq!(out["many_empty"], serde_json::json!([]));
    for id in [&many[0], &many[49]] {
        let task = h.client.get(id).await?;
        assert_eq!(task.state(), TaskState::Succeeded, "{task:?}");
        assert_eq!(task.task_type, "echo");
    }
    let invalid = out["many_invalid"].as_str().expect("a refusal");
    assert!(invalid.contains("tasks[1].task_type"), "{invalid}");
    let queues = h.client.list_queues().await?;
    assert!(
        queues
            .iter()
            .all(|q| q.name != "all_or_none" || q.submitted_total == 0),
        "a refused batch enqueued nothing: {queues:?}"
    );
    let too_big = out["many_too_big"].as_str().expect("a refusal");
    assert!(too_big.contains("the limit is 60"), "{too_big}");

    let nowait = ids("nowait_ids");
    assert_eq!(nowait.len(), 500);
    let distinct: std::collections::HashSet<_> = nowait.iter().collect();
    assert_eq!(distinct.len(), 500, "one task per submit");
    assert_eq!(out["nowait_types"], serde_json::json!(["TaskHandle"]));
    assert_eq!(out["nowait_done"], true);
    assert_eq!(out["nowait_results"], serde_json::json!([0, 249, 499]));
    for id in [&nowait[0], &nowait[499]] {
        let task = h.client.get(id).await?;
        assert_eq!(task.state(), TaskState::Succeeded, "{task:?}");
    }

    let refused = &out["nowait_invalid"];
    assert_eq!(refused["rpc_error"], true, "{refused}");
    assert_eq!(refused["code"], "INVALID_ARGUMENT", "{refused}");
    let details = refused["details"].as_str().expect("details");
    assert!(details.contains("queue"), "{details}");
    assert_eq!(
        out["blocking_invalid"], refused["details"],
        "the same error both ways"
    );
    assert_eq!(out["nowait_exception"], "InvalidArgument");
    assert_eq!(out["callback"], true);
    assert_eq!(out["late_callback"], serde_json::json!(["InvalidArgument"]));
    assert_eq!(out["many_nowait"], serde_json::json!([0, 1, 2, 3, 4]));
    assert_eq!(out["down"], "Unavailable");
    Ok(())
}

/// `submit_nowait` coalescing: submits queued together go out as one `SubmitTasks`, and each
/// future still gets its own answer. Counts the calls on the wire with a client interceptor.
const COALESCED_NOWAIT_PRODUCER: &str = r#"
import collections
import json
import subprocess
import sys
import threading

import grpc
import tarefa

scheduler, down = sys.argv[1], sys.argv[2]
out = {}


class Calls(grpc.UnaryUnaryClientInterceptor):
    """Counts the calls by method, and the tasks of each SubmitTasks."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = collections.Counter()
        self.sizes = []

    def intercept_unary_unary(self, continuation, details, request):
        method = details.method.rsplit("/", 1)[-1]
        with self.lock:
            self.calls[method] += 1
            if method == "SubmitTasks":
                self.sizes.append(len(request.tasks))
        return continuation(details, request)


def counted(target, **options):
    calls = Calls()
    channel = grpc.intercept_channel(grpc.insecure_channel(target), calls)
    return tarefa.Client(target, channel=channel, **options), calls


def payload_of(client, handle):
    return json.loads(client.get(handle.id).payload)


# Many submits from one thread, then from four at once: each future resolves to its own task
# (its payload is the one submitted), in batches of at most submit_batch, never sent twice.
client, calls = counted(scheduler, submit_batch=100)
futures = [client.submit_nowait("echo", {"n": n}, queue="coalesced") for n in range(2000)]
handles = [f.result(timeout=60) for f in futures]
out["one_thread_ids"] = [h.id for h in handles]
out["one_thread_in_order"] = all(
    payload_of(client, h) == {"n": n} for n, h in enumerate(handles)
)
by_thread = {}


def produce(t):
    by_thread[t] = [
        client.submit_nowait("echo", {"t": t, "n": n}, queue="coalesced") for n in range(250)
    ]


threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
threaded = {t: [f.result(timeout=60) for f in fs] for t, fs in by_thread.items()}
out["threads_ids"] = [h.id for hs in threaded.values() for h in hs]
out["threads_in_order"] = all(
    payload_of(client, h) == {"t": t, "n": n}
    for t, hs in threaded.items()
    for n, h in enumerate(hs)
)
out["many_calls"] = dict(calls.calls)
out["many_sizes"] = {"max": max(calls.sizes), "sum": sum(calls.sizes), "calls": len(calls.sizes)}
client.close()

# Two invalid submits among valid ones in one window (a long linger: the first result() sends
# them): the batch is refused whole, sent again in pieces, and only the invalid ones fail.
client, calls = counted(scheduler, submit_linger=60)
futures = [client.submit_nowait("echo", {"m": m}, queue="mixed") for m in range(10)]
futures.append(client.submit_nowait("bad type!", {}, queue="mixed"))
futures += [client.submit_nowait("echo", {"m": m}, queue="mixed") for m in range(10, 15)]
futures.append(client.submit_nowait("echo", {}, queue="no spaces allowed"))
futures += [client.submit_nowait("echo", {"m": m}, queue="mixed") for m in range(15, 20)]
out["mixed_pending"] = not any(f.done() for f in futures)
errors = [f.exception(timeout=60) for f in futures]
out["mixed_errors"] = [None if e is None else type(e).__name__ for e in errors]
out["mixed_invalid"] = [errors[10].details(), errors[16].details()]
blocking = []
for task_type, queue in (("bad type!", "mixed"), ("echo", "no spaces allowed")):
    try:
        client.submit(task_type, {}, queue=queue)
    except tarefa.InvalidArgument as error:
        blocking.append(error.details())
out["mixed_blocking_invalid"] = blocking
good = [f.result() for n, f in enumerate(futures) if n not in (10, 16)]
out["mixed_ids"] = [h.id for h in good]
out["mixed_in_order"] = all(payload_of(client, h) == {"m": m} for m, h in enumerate(good))
out["mixed_calls"] = dict(calls.calls)
calls.calls.clear()

# Idempotency keys, delays, headers, priorities go through a coalesced call unchanged.
first = client.submit_nowait("echo", {"k": 1}, queue="keyed", idempotency_key="coalesced-key")
again = client.submit_nowait("echo", {"k": 2}, queue="keyed", idempotency_key="coalesced-key")
shaped = client.submit_nowait(
    "echo", {"k": 3}, queue="keyed", delay=0.3, headers={"origin": "coalesced"}, priority=7,
    max_attempts=4,
)
keyed = [f.result(timeout=60) for f in (first, again, shaped)]
later = client.submit_nowait("echo", {"k": 4}, queue="keyed", idempotency_key="coalesced-key")
late = later.result(timeout=60)
out["keyed"] = [[h.id, h.deduplicated] for h in keyed + [late]]
out["keyed_calls"] = dict(calls.calls)
client.close()

# Submits still queued at close() are sent, and answered before close() returns.
client, calls = counted(scheduler, submit_linger=60, submit_batch=1000)
futures = [client.submit_nowait("echo", {"c": c}, queue="closing") for c in range(40)]
out["closing_pending"] = not any(f.done() for f in futures)
client.close()
out["closing_done"] = all(f.done() for f in futures)
out["closing_ids"] = [f.result().id for f in futures]
out["closing_calls"] = dict(calls.calls)
try:
    client.submit_nowait("echo", {}, queue="closing")
    out["after_close"] = "accepted"
except ValueError as error:
    out["after_close"] = str(error)

# ...and at the interpreter's exit, when the client is never closed.
exiting = subprocess.run(
    [sys.executable, "-c",
     "import sys, tarefa\n"
     "client = tarefa.Client(sys.argv[1], submit_linger=60)\n"
     "for a in range(10):\n"
     "    client.submit_nowait('echo', {'a': a}, queue='atexit')\n",
     scheduler],
    timeout=120,
)
out["atexit_status"] = exiting.returncode

# A transport failure goes to every future of the call, which is not sent again.
client, calls = counted(down, submit_linger=60, timeout=5)
futures = [client.submit_nowait("echo", {}) for _ in range(5)]
out["down_errors"] = [type(f.exception(timeout=60)).__name__ for f in futures]
out["down_calls"] = dict(calls.calls)
client.close()
print(json.dumps(out))
"#;

#[tokio::test]
async fn python_nowait_submits_are_coalesced_with_answers_per_task() -> anyhow::Result<()> {
    let python = venv_python().await;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("coalesced_nowait.py");
    std::fs::write(&script, COALESCED_NOWAIT_PRODUCER)?;
    let h = Harness::builder()
        .executor_args(&[
            "--queues",
            "default,coalesced,mixed,keyed,closing,atexit",
            "--concurrency",
            "32",
        ])
        .start()
        .await?;
    let out = run_producer(&python, &script, &h, Duration::from_secs(240)).await;
    let ids = |key: &str| producer_ids(&out, key);
    let distinct = |ids: &[String]| ids.iter().collect::<std::collections::HashSet<_>>().len();
    let queue_counts = |name: &'static str| {
        let client = h.client.clone();
        async move {
            let queues = client.list_queues().await.ok()?;
            let q = queues.into_iter().find(|q| q.name == name)?;
            Some((q.submitted_total, q.succeeded_total))
        }
    };
    let all_ran = |name: &'static str, n: u64| {
        let queue_counts = &queue_counts;
        async move {
            eventually(
                &format!("the {n} tasks of queue {name} to succeed"),
                Duration::from_secs(120),
                || async move { queue_counts(name).await.filter(|&(_, done)| done >= n) },
            )
            .await
        }
    };

    // Many submits: one task each, the right one, every one run, in few calls.
    let one_thread = ids("one_thread_ids");
    let threads = ids("threads_ids");
    assert_eq!(one_thread.len(), 2000);
    assert_eq!(threads.len(), 1000);
    let mut every = one_thread.clone();
    every.extend(threads.iter().cloned());
    assert_eq!(distinct(&every), 3000, "one task per submit");
    assert_eq!(out["one_thread_in_order"], true, "{out}");
    assert_eq!(out["threads_in_order"], true, "{out}");
    // A batch that holds one submit when its linger ends goes out as a `SubmitTask` (a busy
    // machine can delay the producer past the 2 ms linger): counted with the batches.
    let alone = out["many_calls"]
        .get("SubmitTask")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let sizes = &out["many_sizes"];
    assert_eq!(
        sizes["sum"].as_u64().map(|sum| sum + alone),
        Some(3000),
        "each task sent once: {sizes}, {alone} alone"
    );
    assert!(sizes["max"].as_u64() <= Some(100), "{sizes}");
    assert!(
        sizes["calls"].as_u64().expect("calls") + alone <= 300,
        "at least 10 tasks per call on average: {sizes}, {alone} alone"
    );
    assert_eq!(all_ran("coalesced", 3000).await, (3000, 3000));

    // The invalid submit fails alone, as the blocking call would; its neighbours run.
    assert_eq!(out["mixed_pending"], true, "{out}");
    let mut expected = vec![Value::Null; 22];
    expected[10] = "InvalidArgument".into();
    expected[16] = "InvalidArgument".into();
    assert_eq!(out["mixed_errors"], Value::Array(expected), "{out}");
    assert_eq!(
        out["mixed_invalid"], out["mixed_blocking_invalid"],
        "the blocking call's errors: {out}"
    );
    let invalid = &out["mixed_invalid"];
    assert!(
        invalid[0]
            .as_str()
            .is_some_and(|d| d.starts_with("task_type"))
            && invalid[1].as_str().is_some_and(|d| d.starts_with("queue")),
        "{out}"
    );
    assert_eq!(out["mixed_in_order"], true, "{out}");
    // Written in submit order: the ids of tasks due now are their stream entries'.
    let entries: Vec<(u64, u64)> = ids("mixed_ids")
        .iter()
        .map(|id| {
            let (ms, seq) = id
                .trim_start_matches("mixed:")
                .split_once('-')
                .unwrap_or_else(|| panic!("a stream entry id: {id}"));
            (ms.parse().expect("ms"), seq.parse().expect("seq"))
        })
        .collect();
    assert_eq!(entries.len(), 20);
    assert!(
        entries.windows(2).all(|w| w[0] < w[1]),
        "in submit order: {out}"
    );
    // The refused SubmitTasks (it wrote nothing), then [0, 10) together, tasks[10] alone,
    // the rest refused again at its tasks[5], [11, 16) together, that one alone, [17, 22)
    // together; and the two blocking submits.
    assert_eq!(
        out["mixed_calls"],
        serde_json::json!({"SubmitTasks": 5, "SubmitTask": 4, "GetTask": 20}),
        "{out}"
    );
    assert_eq!(all_ran("mixed", 20).await, (20, 20));

    // Keys deduplicate within a coalesced call and across calls; fields pass unchanged.
    let keyed = out["keyed"].as_array().expect("keyed");
    let (first, again, shaped, late) = (&keyed[0], &keyed[1], &keyed[2], &keyed[3]);
    assert_eq!(first[1], false, "{out}");
    assert_eq!(again[0], first[0], "{out}");
    assert_eq!(again[1], true, "{out}");
    assert_eq!(late[0], first[0], "{out}");
    assert_eq!(late[1], true, "{out}");
    assert_ne!(shaped[0], first[0], "{out}");
    assert_eq!(
        out["keyed_calls"],
        serde_json::json!({"SubmitTasks": 1, "SubmitTask": 1}),
        "the first three went together, the fourth alone: {out}"
    );
    let shaped = h
        .wait_final(shaped[0].as_str().expect("id"), Duration::from_secs(60))
        .await;
    assert_eq!(shaped.state(), TaskState::Succeeded, "{shaped:?}");
    assert_eq!(shaped.priority, 7);
    assert_eq!(shaped.max_attempts, 4);
    assert_eq!(
        shaped.headers.get("origin").map(String::as_str),
        Some("coalesced")
    );
    assert!(
        shaped.run_at_ms >= shaped.created_at_ms + 250,
        "delayed: {shaped:?}"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&shaped.payload)?,
        serde_json::json!({"k": 3})
    );

    // close() sent what was queued; so did the interpreter's exit.
    assert_eq!(out["closing_pending"], true, "{out}");
    assert_eq!(out["closing_done"], true, "{out}");
    assert_eq!(distinct(&ids("closing_ids")), 40);
    assert_eq!(
        out["closing_calls"],
        serde_json::json!({"SubmitTasks": 1}),
        "{out}"
    );
    assert_eq!(out["after_close"], "the client is closed");
    assert_eq!(all_ran("closing", 40).await, (40, 40));
    assert_eq!(out["atexit_status"], 0, "{out}");
    assert_eq!(all_ran("atexit", 10).await, (10, 10));

    // Unreachable: every future raises Unavailable, from one call that is not repeated.
    assert_eq!(
        out["down_errors"],
        serde_json::json!(vec!["Unavailable"; 5]),
        "{out}"
    );
    assert_eq!(
        out["down_calls"],
        serde_json::json!({"SubmitTasks": 1}),
        "{out}"
    );
    Ok(())
}

/// A producer whose token may submit to `mail` only: its coalesced submits to `mail` and to
/// `billing`, queued in one linger window, go out as one `SubmitTasks`, which the scheduler
/// refuses whole (PERMISSION_DENIED, nothing written). Each future must still get its own
/// answer: the `billing` ones raise `tarefa.PermissionDenied`, the `mail` ones are written.
const SCOPED_NOWAIT_PRODUCER: &str = r#"
import json
import sys

import tarefa

scheduler, token = sys.argv[1], sys.argv[2]
client = tarefa.Client(scheduler, token=token, submit_linger=0.5)
futures = [
    client.submit_nowait("echo", {"n": n}, queue="billing" if n % 3 == 1 else "mail")
    for n in range(12)
]
client.flush(timeout=60)
out = {"answers": []}
for n, future in enumerate(futures):
    error = future.exception(timeout=60)
    if error is None:
        out["answers"].append([n, "ok", future.result().id])
    else:
        out["answers"].append([n, type(error).__name__, str(error)])
client.close()
print(json.dumps(out))
"#;

#[tokio::test]
async fn python_coalesced_submits_refused_by_scope_are_answered_each() -> anyhow::Result<()> {
    const MAILER: &str = "mailer-secret-0123456789";
    const ADMIN: &str = "admin-secret-0123456789";
    let python = venv_python().await;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("scoped_nowait.py");
    std::fs::write(&script, SCOPED_NOWAIT_PRODUCER)?;
    let h = Harness::builder()
        .env(
            "TAREFA_TOKENS",
            &format!("mailer:submit:mail:{MAILER};admin:admin:*:{ADMIN}"),
        )
        .client_options(tarefa_client::ConnectOptions {
            token: Some(ADMIN.to_owned()),
            ..tarefa_client::ConnectOptions::default()
        })
        .executor_args(&["--queues", "mail,billing"])
        .start()
        .await?;
    let out = run_producer_with(&python, &script, &h, MAILER, Duration::from_secs(120)).await;
    let answers = out["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 12, "{out}");
    for answer in answers {
        let n = answer[0].as_u64().expect("n");
        let (kind, detail) = (
            answer[1].as_str().expect("kind"),
            answer[2].as_str().expect("detail"),
        );
        if n % 3 == 1 {
            assert_eq!(kind, "PermissionDenied", "task {n}: {answer}");
        } else {
            assert_eq!(kind, "ok", "task {n}: {answer}");
            let task = h.wait_final(detail, Duration::from_secs(30)).await;
            assert_eq!(task.state(), TaskState::Succeeded, "task {n}: {task:?}");
            assert_eq!(
                serde_json::from_slice::<Value>(&task.result)?["n"],
                serde_json::json!(n),
                "task {n} kept its own payload"
            );
        }
    }
    Ok(())
}
