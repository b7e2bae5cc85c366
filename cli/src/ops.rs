//! The commands that talk to a scheduler: submit, get, watch, queues, tasks, cancel, retry,
//! pause, resume, purge-dead. Human output by default, `--json` for scripts.

use std::io::Write as _;
use std::time::Duration;

use futures::StreamExt;
use tarefa_client::{Client, Error, SubmitOptions};
use tarefa_proto as pb;

use crate::{Command, EXIT_FAILED, EXIT_USAGE};

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The task type, e.g. fib.
    task_type: String,
    /// The payload, as JSON.
    #[arg(default_value = "{}")]
    payload: String,
    /// The queue.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Wait for the result and print it.
    #[arg(long)]
    wait: bool,
    /// Run after this many milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Attempts in all.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Per-attempt timeout in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Deduplication key.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Submit this many copies (in batches), with a progress line and a summary.
    #[arg(long, default_value_t = 1)]
    count: usize,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TasksArgs {
    /// The queue.
    #[arg(long, default_value = "default")]
    queue: String,
    /// The state: scheduled, queued, running, succeeded, retrying, dead, cancelled.
    #[arg(long, default_value = "dead")]
    state: String,
    /// Only this task type.
    #[arg(long = "type")]
    task_type: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RetryArgs {
    /// The dead task to requeue.
    task_id: Option<String>,
    /// Requeue every dead task of --queue.
    #[arg(long)]
    all_dead: bool,
    /// The queue for --all-dead.
    #[arg(long, default_value = "default")]
    queue: String,
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): task data (errors, results,
/// messages) is printed as text, never as terminal commands.
pub(crate) fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn state_name(state: i32) -> &'static str {
    pb::TaskState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_"))
        .unwrap_or("?")
}

fn parse_state(text: &str) -> Option<pb::TaskState> {
    pb::TaskState::from_str_name(&format!("TASK_STATE_{}", text.to_uppercase()))
}

fn task_json(task: &pb::Task) -> serde_json::Value {
    let text = |bytes: &[u8]| -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
        })
    };
    serde_json::json!({
        "task_id": task.task_id,
        "queue": task.queue,
        "task_type": task.task_type,
        "state": state_name(task.state),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "payload": text(&task.payload),
        "result": if task.result.is_empty() { serde_json::Value::Null } else { text(&task.result) },
        "last_error": task.last_error,
        "errors": task.errors.iter().map(|e| serde_json::json!({"attempt": e.attempt, "message": e.message, "at_ms": e.at_ms})).collect::<Vec<_>>(),
        "progress": task.progress,
        "progress_message": task.progress_message,
        "created_at_ms": task.created_at_ms,
        "started_at_ms": task.started_at_ms,
        "finished_at_ms": task.finished_at_ms,
        "trace_id": task.trace_id,
        "executor_id": task.executor_id,
    })
}

fn print_task(task: &pb::Task, json: bool) {
    if json {
        println!("{}", task_json(task));
        return;
    }
    println!("task      {}", task.task_id);
    println!("type      {}", escape(&task.task_type));
    println!("state     {}", state_name(task.state));
    println!("attempt   {}/{}", task.attempt, task.max_attempts);
    if !task.result.is_empty() {
        println!(
            "result    {}",
            escape(&String::from_utf8_lossy(&task.result))
        );
    }
    if !task.last_error.is_empty() {
        println!("error     {}", escape(&task.last_error));
    }
    if task.progress > 0.0 {
        println!(
            "progress  {:.0}% {}",
            task.progress * 100.0,
            escape(&task.progress_message)
        );
    }
    if !task.trace_id.is_empty() {
        println!("trace     {}", task.trace_id);
    }
}

fn final_code(task: &pb::Task) -> i32 {
    if task.state() == pb::TaskState::Succeeded {
        0
    } else {
        EXIT_FAILED
    }
}

/// What is wrong with the arguments, found before connecting: a bad argument is the user's to
/// fix whether or not the scheduler is up, so it exits [`EXIT_USAGE`] either way.
fn usage_error(command: &Command) -> Option<String> {
    match command {
        Command::Submit(args)
            if serde_json::from_str::<serde_json::Value>(&args.payload).is_err() =>
        {
            Some(format!("the payload is not valid JSON: {}", args.payload))
        }
        Command::Tasks(args) if parse_state(&args.state).is_none() => {
            Some(format!("unknown state {:?}", args.state))
        }
        Command::Retry(args) if args.task_id.is_none() && !args.all_dead => {
            Some("give a task id or --all-dead".to_owned())
        }
        _ => None,
    }
}

/// Runs one of the scheduler commands; `Ok` carries the exit code, `Err` a client error (the
/// caller maps it to an exit code).
pub(crate) async fn run(
    scheduler: &str,
    json: bool,
    options: tarefa_client::ConnectOptions,
    command: Command,
) -> Result<i32, Error> {
    if let Some(message) = usage_error(&command) {
        eprintln!("tarefa: {}", escape(&message));
        return Ok(EXIT_USAGE);
    }
    let client = Client::connect_with(scheduler.to_owned(), options).await?;
    match command {
        Command::Dev(_) => Ok(0),
        Command::Submit(args) => submit(&client, json, args).await,
        Command::Get { task_id } => {
            let task = client.get(&task_id).await?;
            print_task(&task, json);
            Ok(0)
        }
        Command::Watch { task_id } => watch(&client, json, &task_id).await,
        Command::Queues => {
            let queues = client.list_queues().await?;
            if json {
                let rows: Vec<_> = queues.iter().map(|q| serde_json::json!({
                    "name": q.name, "queued": q.queued, "running": q.running,
                    "scheduled": q.scheduled, "retrying": q.retrying, "dead": q.dead,
                    "succeeded_total": q.succeeded_total, "failed_total": q.failed_total,
                    "paused": q.paused, "oldest_waiting_ms": q.oldest_waiting_ms,
                    "executors": q.executors.len(), "succeeded_last_minute": q.succeeded_last_minute,
                })).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<20} {:>8} {:>8} {:>9} {:>8} {:>6} {:>10} {:>9} {:>6}",
                    "QUEUE",
                    "QUEUED",
                    "RUNNING",
                    "SCHEDULED",
                    "RETRYING",
                    "DEAD",
                    "SUCCEEDED",
                    "EXECUTORS",
                    "PAUSED"
                );
                for q in queues {
                    println!(
                        "{:<20} {:>8} {:>8} {:>9} {:>8} {:>6} {:>10} {:>9} {:>6}",
                        q.name,
                        q.queued,
                        q.running,
                        q.scheduled,
                        q.retrying,
                        q.dead,
                        q.succeeded_total,
                        q.executors.len(),
                        if q.paused { "yes" } else { "no" }
                    );
                }
            }
            Ok(0)
        }
        Command::Tasks(args) => {
            let Some(state) = parse_state(&args.state) else {
                eprintln!("tarefa: unknown state {:?}", args.state);
                return Ok(EXIT_USAGE);
            };
            let page = client
                .list_tasks(pb::ListTasksRequest {
                    queue: args.queue,
                    state: state as i32,
                    task_type: args.task_type.unwrap_or_default(),
                    page_size: args.limit,
                    page_token: String::new(),
                })
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(page.tasks.iter().map(task_json).collect())
                );
            } else {
                println!(
                    "{:<40} {:<14} {:<10} {:>7}  ERROR",
                    "TASK", "TYPE", "STATE", "ATTEMPT"
                );
                for t in page.tasks {
                    println!(
                        "{:<40} {:<14} {:<10} {:>3}/{:<3}  {}",
                        t.task_id,
                        escape(&t.task_type),
                        state_name(t.state),
                        t.attempt,
                        t.max_attempts,
                        escape(&t.last_error)
                    );
                }
            }
            Ok(0)
        }
        Command::Cancel { task_id } => {
            let task = client.cancel(&task_id).await?;
            print_task(&task, json);
            Ok(0)
        }
        Command::Retry(args) => retry(&client, json, args).await,
        Command::Pause { queue } => {
            let q = client.pause(&queue).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"queue": q.name, "paused": q.paused})
                );
            } else {
                println!("queue {} paused", q.name);
            }
            Ok(0)
        }
        Command::Resume { queue } => {
            let q = client.resume(&queue).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"queue": q.name, "paused": q.paused})
                );
            } else {
                println!("queue {} resumed", q.name);
            }
            Ok(0)
        }
        Command::PurgeDead { queue } => {
            let purged = client.purge_dead(&queue).await?;
            if json {
                println!("{}", serde_json::json!({"queue": queue, "purged": purged}));
            } else {
                println!("purged {purged} dead tasks from {queue}");
            }
            Ok(0)
        }
    }
}

async fn submit(client: &Client, json: bool, args: SubmitArgs) -> Result<i32, Error> {
    if serde_json::from_str::<serde_json::Value>(&args.payload).is_err() {
        eprintln!("tarefa: the payload is not valid JSON: {}", args.payload);
        return Ok(EXIT_USAGE);
    }
    let options = SubmitOptions {
        queue: Some(args.queue.clone()),
        delay: args.delay_ms.map(Duration::from_millis),
        max_attempts: args.max_attempts,
        timeout: args.timeout_ms.map(Duration::from_millis),
        idempotency_key: args.idempotency_key.clone(),
        ..SubmitOptions::default()
    };
    let request = options.request(&args.task_type, args.payload.clone().into_bytes());
    if args.count <= 1 {
        let response = client.submit_raw(request).await?;
        if !args.wait {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"task_id": response.task_id, "deduplicated": response.deduplicated})
                );
            } else {
                println!("{}", response.task_id);
            }
            return Ok(0);
        }
        return match client.wait(&response.task_id).await {
            Ok(task) => {
                if json {
                    println!("{}", task_json(&task));
                } else {
                    println!("{}", escape(&String::from_utf8_lossy(&task.result)));
                }
                Ok(0)
            }
            Err(Error::TaskFailed {
                task_id,
                state,
                error,
            }) => {
                eprintln!("task {task_id} ended {state}: {}", escape(&error));
                Ok(EXIT_FAILED)
            }
            Err(error) => Err(error),
        };
    }
    let started = std::time::Instant::now();
    let mut ids = Vec::with_capacity(args.count);
    let mut remaining = args.count;
    while remaining > 0 {
        let n = remaining.min(500);
        let batch = vec![request.clone(); n];
        ids.extend(
            client
                .submit_batch(batch)
                .await?
                .into_iter()
                .map(|r| r.task_id),
        );
        remaining -= n;
        if !json {
            eprint!("\rsubmitted {}/{}", ids.len(), args.count);
            let _ = std::io::stderr().flush();
        }
    }
    let submit_secs = started.elapsed().as_secs_f64();
    if !json {
        eprintln!(
            "\rsubmitted {} tasks in {:.2}s ({:.0}/s)",
            ids.len(),
            submit_secs,
            ids.len() as f64 / submit_secs.max(1e-9)
        );
    }
    if !args.wait {
        if json {
            println!(
                "{}",
                serde_json::json!({"submitted": ids.len(), "task_ids": ids, "seconds": submit_secs})
            );
        }
        return Ok(0);
    }
    let (mut succeeded, mut failed) = (0usize, 0usize);
    let mut waits =
        futures::stream::iter(ids.iter().map(|id| client.wait(id))).buffer_unordered(256);
    while let Some(result) = waits.next().await {
        match result {
            Ok(_) => succeeded += 1,
            Err(_) => failed += 1,
        }
        if !json && (succeeded + failed) % 100 == 0 {
            eprint!("\rfinished {}/{}", succeeded + failed, ids.len());
            let _ = std::io::stderr().flush();
        }
    }
    let total_secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"submitted": ids.len(), "succeeded": succeeded, "failed": failed, "seconds": total_secs})
        );
    } else {
        eprintln!(
            "\r{} succeeded, {} failed in {:.2}s ({:.0} tasks/s end to end)",
            succeeded,
            failed,
            total_secs,
            ids.len() as f64 / total_secs.max(1e-9)
        );
    }
    Ok(if failed == 0 { 0 } else { EXIT_FAILED })
}

async fn watch(client: &Client, json: bool, task_id: &str) -> Result<i32, Error> {
    let mut stream = client.watch(task_id).await?;
    let mut last = None;
    while let Some(task) = stream.next().await {
        let task = task?;
        if json {
            println!("{}", task_json(&task));
        } else {
            let width = 30usize;
            let filled = ((task.progress.clamp(0.0, 1.0)) * width as f64).round() as usize;
            eprint!(
                "\r{:<10} attempt {}/{} [{}{}] {:>3.0}% {:<40}",
                state_name(task.state),
                task.attempt,
                task.max_attempts,
                "#".repeat(filled),
                "-".repeat(width - filled),
                task.progress * 100.0,
                escape(&task.progress_message)
            );
            let _ = std::io::stderr().flush();
        }
        last = Some(task);
    }
    let Some(task) = last else {
        return Ok(EXIT_FAILED);
    };
    if !json {
        eprintln!();
        print_task(&task, false);
    }
    Ok(final_code(&task))
}

/// Requeues one dead task, or with `--all-dead` every task that is dead when it starts: each
/// at most once, so a task that dies again while this runs (or cannot be requeued) does not
/// keep it looping.
async fn retry(client: &Client, json: bool, args: RetryArgs) -> Result<i32, Error> {
    if let Some(task_id) = args.task_id {
        let task = client.retry(&task_id).await?;
        print_task(&task, json);
        return Ok(0);
    }
    if !args.all_dead {
        eprintln!("tarefa: give a task id or --all-dead");
        return Ok(EXIT_USAGE);
    }
    // One RetryDeadTasks call: the scheduler requeues each dead task once.
    let retried = client.retry_dead(&args.queue).await?;
    if json {
        println!("{}", serde_json::json!({"retried": retried}));
    } else {
        println!("requeued {retried} dead tasks from {}", args.queue);
    }
    Ok(0)
}
