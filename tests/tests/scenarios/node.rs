//! Node.js against the contract alone: the example in `examples/node` (a producer and a
//! `TaskHandler`, both loading `proto/tarefa/v1/tarefa.proto` at run time with
//! `@grpc/proto-loader`) against the real scheduler and executor. Its npm dependencies are
//! installed with `npm ci` from a copy of its `package.json` and `package-lock.json` under the
//! target directory, never into the checkout; the checkout's scripts run with `NODE_PATH`
//! pointing there.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};
use tarefa_client::SubmitOptions;
use tarefa_proto::TaskState;
use tarefa_tests::{
    Harness, Process, free_port, run_command, target_dir, trace_id_of, wait_for_listener,
    workspace_root,
};

/// The installed `node_modules`, or why it could not be made; made once per test binary.
static NODE_MODULES: OnceLock<Result<PathBuf, String>> = OnceLock::new();

const INSTALL_NODE: &str = "the Node.js tests need node and npm: install them \
     (Debian/Ubuntu: apt-get install nodejs npm; macOS: brew install node)";

/// The manifest `npm ci` installs from, copied out of `examples/node`.
const MANIFEST: [&str; 2] = ["package.json", "package-lock.json"];

fn example_dir() -> PathBuf {
    workspace_root().join("examples").join("node")
}

/// `node_modules` with the example's locked dependencies, installed on first use and reused
/// while its manifest (and the node version) is unchanged.
async fn node_modules() -> PathBuf {
    tokio::task::spawn_blocking(|| NODE_MODULES.get_or_init(install).clone())
        .await
        .expect("npm install panicked")
        .unwrap_or_else(|error| panic!("{error}"))
}

fn install() -> Result<PathBuf, String> {
    let node = run_command(Command::new("node").arg("--version"), "node")
        .map_err(|e| format!("{INSTALL_NODE}\n({e})"))?;
    run_command(Command::new("npm").arg("--version"), "npm")
        .map_err(|e| format!("{INSTALL_NODE}\n({e})"))?;
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    // Other test runs sharing the target directory wait here while one installs.
    let lock_file = File::create(target.join("node-example.lock")).map_err(|e| e.to_string())?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock the node example: {e}"))?;

    let dir = target.join("node-example");
    let modules = dir.join("node_modules");
    let mut hasher = DefaultHasher::new();
    node.hash(&mut hasher);
    let mut manifest = Vec::new();
    for name in MANIFEST {
        let text = std::fs::read(example_dir().join(name))
            .map_err(|e| format!("cannot read examples/node/{name}: {e}"))?;
        text.hash(&mut hasher);
        manifest.push((name, text));
    }
    let stamp = format!("{:016x}\n", hasher.finish());
    let stamp_file = dir.join(".tarefa-stamp");
    let installed = ["@grpc/grpc-js", "@grpc/proto-loader"]
        .iter()
        .all(|package| modules.join(package).join("package.json").exists());
    if installed && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(modules);
    }

    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&stamp_file);
    for (name, text) in manifest {
        std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    run_command(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .env("NPM_CONFIG_UPDATE_NOTIFIER", "false"),
        "npm ci (examples/node)",
    )?;
    std::fs::write(&stamp_file, stamp).map_err(|e| e.to_string())?;
    Ok(modules)
}

/// `node <examples/node/script> args…` with the installed dependencies.
fn node_command(modules: &Path, script: &str) -> Command {
    let mut command = Command::new("node");
    command
        .arg(example_dir().join(script))
        .env("NODE_PATH", modules);
    command
}

/// Runs an example script to completion (killed if it outlives `within`) and returns its
/// stdout; panics with its output if it fails.
async fn run_node(
    modules: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    within: Duration,
) -> String {
    let mut command = tokio::process::Command::from(node_command(modules, script));
    command.args(args).envs(env.iter().copied());
    tarefa_tests::run_to_completion(command, &format!("node {script} {args:?}"), within).await
}

#[tokio::test]
async fn node_producer_and_grpc_handler() -> anyhow::Result<()> {
    let modules = node_modules().await;
    let logs = tempfile::tempdir()?;
    let port = free_port();
    let mut command = node_command(&modules, "handler.js");
    command.arg(port.to_string());
    let handler = Process::start(
        "node-handler",
        &mut command,
        logs.path().join("handler.log"),
    )?;
    if let Err(error) = wait_for_listener(port, Duration::from_secs(30)).await {
        panic!(
            "the node handler did not listen: {error}\n{}",
            handler.log()
        );
    }
    let route = format!("word_count_js=grpc://127.0.0.1:{port}");
    // With tokens, as a deployment has them: the producer sends its own (TAREFA_TOKEN).
    const PRODUCER_TOKEN: &str = "node-producer-token-0123456789";
    const TEST_TOKEN: &str = "node-test-admin-token-0123456789";
    let h = Harness::builder()
        .executor_args(&["--handler", &route])
        .env(
            "TAREFA_TOKENS",
            &format!("producer:submit,read:*:{PRODUCER_TOKEN};test:admin:*:{TEST_TOKEN}"),
        )
        .client_options(tarefa_client::ConnectOptions {
            token: Some(TEST_TOKEN.to_owned()),
            ..Default::default()
        })
        .start()
        .await?;
    let scheduler = h.scheduler.endpoint.trim_start_matches("http://");

    // The producer, as a user runs it: SubmitTask, then WatchTask until a final state.
    let output = run_node(
        &modules,
        "producer.js",
        &[scheduler],
        &[("TAREFA_TOKEN", PRODUCER_TOKEN)],
        Duration::from_secs(120),
    )
    .await;
    let out: Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("producer output is not JSON ({e}): {output}"));

    let fib = &out["fib"];
    assert_eq!(fib["state"], "SUCCEEDED", "{out}");
    assert_eq!(fib["result"], "2880067194370816120");
    let task = h.client.get(fib["task_id"].as_str().expect("id")).await?;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.task_type, "fib");

    // The Node handler ran it: its result, as the producer and the Rust client read it.
    let words = &out["word_count_js"];
    assert_eq!(words["state"], "SUCCEEDED", "{out}");
    let result = &words["result"];
    assert_eq!(result["words"], 11, "{result}");
    assert_eq!(result["top"][0], json!(["the", 3]), "{result}");
    assert_eq!(result["attempt"], 1, "{result}");
    let task = h.client.get(words["task_id"].as_str().expect("id")).await?;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.task_type, "word_count_js");
    assert_eq!(task.attempt, 1);
    assert_eq!(&serde_json::from_slice::<Value>(&task.result)?, result);
    // The executor's attempt span travelled to the Node handler: same trace as the task.
    let traceparent = result["traceparent"].as_str().expect("traceparent");
    assert!(!task.trace_id.is_empty(), "the task has a trace id");
    assert_eq!(trace_id_of(traceparent), task.trace_id);

    // A payload without `text`: the handler answers FAIL, the task is DEAD without a retry.
    let bad = h
        .client
        .submit_raw(
            SubmitOptions::default().request("word_count_js", br#"{"txt": "a typo"}"#.to_vec()),
        )
        .await?;
    let task = h.wait_final(&bad.task_id, Duration::from_secs(60)).await;
    assert_eq!(task.state(), TaskState::Dead, "{}", task.last_error);
    assert_eq!(task.attempt, 1, "a permanent failure is not retried");
    assert!(
        task.last_error.contains(r#"expected {"text": "..."}"#),
        "{}",
        task.last_error
    );
    Ok(())
}
