//! Django the way django-rq users know it, for real: the test project in `tests/django` (the
//! app `tarefa.contrib.django` installed, sqlite) and `examples/django`, against a real
//! scheduler, an executor and `manage.py tarefa_worker` processes, with no `--handler` flag:
//! the worker announces its task types and the executor routes them to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tarefa_proto as pb;
use tarefa_tests::{Harness, Process, eventually, workspace_root};

use crate::polyglot::venv_python;

/// `host:port` of the harness's scheduler, as Python clients take it.
pub(crate) fn scheduler_address(h: &Harness) -> String {
    h.scheduler
        .endpoint
        .trim_start_matches("http://")
        .to_owned()
}

/// Waits until `n` live handlers announced `task_type`; returns them.
pub(crate) async fn wait_for_handlers(
    h: &Harness,
    task_type: &str,
    n: usize,
) -> Vec<pb::AnnouncedHandler> {
    let client = h.client.clone();
    eventually(
        &format!("{n} live handlers of {task_type}"),
        Duration::from_secs(60),
        || {
            let mut raw = client.raw();
            let request = pb::ListHandlersRequest {
                task_type: task_type.to_owned(),
            };
            async move {
                let handlers = raw.list_handlers(request).await.ok()?.into_inner().handlers;
                (handlers.len() == n).then_some(handlers)
            }
        },
    )
    .await
}

/// A `manage.py` command of the project in `dir`, talking to the harness's scheduler; the
/// sqlite file and bytecode stay out of the checkout.
fn manage(python: &Path, dir: &Path, h: &Harness, sqlite: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(python);
    command
        .arg(dir.join("manage.py"))
        .args(args)
        .current_dir(dir)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TAREFA_SCHEDULER", scheduler_address(h))
        .env("TEST_SQLITE", sqlite);
    command
}

async fn manage_to_completion(
    python: &Path,
    dir: &Path,
    h: &Harness,
    sqlite: &Path,
    args: &[&str],
) -> String {
    let command = manage(python, dir, h, sqlite, args);
    let what = format!("manage.py {}", args.join(" "));
    let mut command = tokio::process::Command::from(command);
    // Django's test runner reports on stderr: fold it into the output checked below.
    command.stderr(std::process::Stdio::piped());
    let output = tokio::time::timeout(
        tarefa_tests::patience(Duration::from_secs(300)),
        command.kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} did not finish"))
    .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// Starts `manage.py tarefa_worker` and waits until it announced `task_type`.
async fn start_worker(
    python: &Path,
    dir: &Path,
    h: &Harness,
    sqlite: &Path,
    logs: &Path,
    task_type: &str,
) -> Process {
    let mut command = manage(python, dir, h, sqlite, &["tarefa_worker"]);
    let worker = Process::start(
        "tarefa_worker",
        &mut command,
        logs.join("tarefa_worker.log"),
    )
    .expect("start manage.py tarefa_worker");
    wait_for_handlers(h, task_type, 1).await;
    worker
}

fn project(path: &str) -> PathBuf {
    workspace_root().join(path)
}

#[tokio::test]
async fn django_app_delay_on_commit_worker_and_admin() -> anyhow::Result<()> {
    let python = venv_python().await;
    let h = Harness::builder()
        .executor_args(&["--queues", "default,mail,audit"])
        .start()
        .await?;
    let logs = tempfile::tempdir()?;
    let sqlite = logs.path().join("db.sqlite3");
    let dir = project("tests/django");

    let check = manage_to_completion(&python, &dir, &h, &sqlite, &["check"]).await;
    assert!(check.contains("no issues"), "{check}");
    // A misspelt TAREFA setting is a check error, not a silent default.
    let bad = manage(&python, &dir, &h, &sqlite, &["check"])
        .env("TAREFA_TEST_BAD_SETTINGS", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{stderr}");
    assert!(
        stderr.contains("tarefa.E001") && stderr.contains("SCHEDULR") && stderr.contains("mail"),
        "{stderr}"
    );

    let mut worker = start_worker(
        &python,
        &dir,
        &h,
        &sqlite,
        logs.path(),
        "shop.tasks.send_welcome",
    )
    .await;
    let announced = wait_for_handlers(&h, "shop.tasks.audit", 1).await;
    assert_eq!(announced[0].queues, ["audit", "default", "mail"]);

    // Django's own test runner, with its test client: the view's delay(), delay_on_commit in
    // rolled-back and committed transactions, the admin pages and their actions.
    let output = manage_to_completion(
        &python,
        &dir,
        &h,
        &sqlite,
        &["test", "shop", "--verbosity", "2", "--noinput"],
    )
    .await;
    assert!(
        output.contains("Ran 4 tests") && output.contains("\nOK"),
        "{output}"
    );
    for test in [
        "test_a_view_delays_a_task_that_a_worker_runs",
        "test_delay_on_commit",
        "test_only_staff_see_the_pages",
        "test_the_admin_lists_the_queue_and_retries_a_dead_task",
    ] {
        assert!(
            output.contains(&format!("{test}) ... ok")),
            "{test}:\n{output}"
        );
    }

    // The tasks ran in the worker, routed by discovery (the executor has no --handler).
    let welcome = h
        .client
        .list_tasks(pb::ListTasksRequest {
            queue: "mail".to_owned(),
            state: pb::TaskState::Succeeded as i32,
            ..Default::default()
        })
        .await?
        .tasks;
    assert_eq!(welcome.len(), 2, "{welcome:?}");

    // Graceful shutdown: exits 0 and withdraws its announcement.
    assert!(
        worker
            .terminate(tarefa_tests::patience(Duration::from_secs(30)))
            .await,
        "tarefa_worker did not exit cleanly:\n{}",
        worker.log()
    );
    wait_for_handlers(&h, "shop.tasks.send_welcome", 0).await;
    assert!(
        worker.log().contains("tarefa worker stopped"),
        "{}",
        worker.log()
    );
    Ok(())
}

#[tokio::test]
async fn django_example_runs_on_decorated_tasks() -> anyhow::Result<()> {
    let python = venv_python().await;
    let h = Harness::builder().start().await?;
    let logs = tempfile::tempdir()?;
    let sqlite = logs.path().join("db.sqlite3");
    let dir = project("examples/django");

    let check = manage_to_completion(&python, &dir, &h, &sqlite, &["check"]).await;
    assert!(check.contains("no issues"), "{check}");
    let mut worker = start_worker(
        &python,
        &dir,
        &h,
        &sqlite,
        logs.path(),
        "fibapp.tasks.fib_digits",
    )
    .await;
    let output = manage_to_completion(
        &python,
        &dir,
        &h,
        &sqlite,
        &["test", "fibapp", "--verbosity", "2", "--noinput"],
    )
    .await;
    assert!(
        output.contains("Ran 4 tests") && output.contains("\nOK"),
        "{output}"
    );
    assert!(
        worker
            .terminate(tarefa_tests::patience(Duration::from_secs(30)))
            .await
    );
    Ok(())
}
