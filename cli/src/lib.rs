//! `tarefa`: the command line. `tarefa dev` runs the whole system on a laptop; `tarefa bench`
//! measures it; the other commands talk to a scheduler over gRPC.
//!
//! The binary (`src/main.rs`) only calls [`main_from_env`] and exits with its code, so the
//! integration tests build the very same command (`tests/src/bin/tarefa.rs`) and run it as a
//! real process.
//!
//! # Layout
//!
//! - this file: the flags ([`clap`]) and the dispatch to the modules below, with the exit codes.
//! - `ops`: the commands that talk to a scheduler (submit, get, watch, queues, tasks, cancel,
//!   retry, pause, resume, purge-dead).
//! - `dev`: a private redis-server, a scheduler and an executor in one process.
//! - `bench`: throughput, latency and memory on a private Redis, scheduler and executors.
//!
//! # Exit codes
//!
//! 0 on success; [`EXIT_FAILED`] when the scheduler answered with an error or a task failed;
//! [`EXIT_USAGE`] for bad arguments; [`EXIT_UNAVAILABLE`] when the scheduler could not be
//! reached.

mod bench;
mod dev;
mod ops;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit code when the scheduler answered with an error or a task failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for bad arguments (clap's own code for a malformed command line, too).
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the scheduler could not be reached.
pub const EXIT_UNAVAILABLE: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "tarefa",
    version,
    about = "Tarefa: background tasks over gRPC and Redis Streams"
)]
struct Cli {
    /// Scheduler address.
    #[arg(
        long,
        global = true,
        env = "TAREFA_SCHEDULER",
        default_value = "http://127.0.0.1:50051"
    )]
    scheduler: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Token sent as `authorization: Bearer <token>` (never printed).
    #[arg(long, global = true, env = "TAREFA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an https:// scheduler (default: the system's roots).
    #[arg(long, global = true, env = "TAREFA_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate, for a scheduler that wants mTLS (with --client-key).
    #[arg(
        long,
        global = true,
        env = "TAREFA_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "TAREFA_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// The name the scheduler's certificate must be valid for, when not the URL's host.
    #[arg(long, global = true, env = "TAREFA_TLS_DOMAIN")]
    tls_domain: Option<String>,
    #[command(subcommand)]
    command: TopLevel,
}

/// `bench` beside the other commands (kept out of [`Command`], which `ops` matches on).
#[derive(Debug, Subcommand)]
enum TopLevel {
    /// Measure throughput, latency and memory on a private Redis, scheduler and executors.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Other(Command),
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this machine: a private redis-server, a scheduler, an executor.
    Dev(dev::DevArgs),
    /// Submit a task: `tarefa submit fib '{"n": 90}' --wait`.
    Submit(ops::SubmitArgs),
    /// Show a task.
    Get {
        /// The task id.
        task_id: String,
    },
    /// Follow a task until it finishes, with its progress.
    Watch {
        /// The task id.
        task_id: String,
    },
    /// List queues with their counts.
    Queues,
    /// List tasks of a queue in a state.
    Tasks(ops::TasksArgs),
    /// Cancel a task.
    Cancel {
        /// The task id.
        task_id: String,
    },
    /// Requeue a dead task (or every dead task of a queue with --all-dead).
    Retry(ops::RetryArgs),
    /// Pause a queue: executors take no new tasks from it.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Delete every dead task of a queue.
    PurgeDead {
        /// The queue.
        queue: String,
    },
}

/// The whole `tarefa` command: parses the process's arguments (clap prints help, version and
/// usage errors itself and exits), runs the command on a Tokio runtime and returns the exit
/// code for `main` to exit with.
pub fn main_from_env() -> i32 {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tarefa: cannot start the Tokio runtime: {error}");
            return EXIT_FAILED;
        }
    };
    let code = runtime.block_on(run(cli));
    // The command is over: do not let a straggling blocking task hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// Runs a parsed command line and returns its exit code.
async fn run(cli: Cli) -> i32 {
    let options = connect_options(&cli);
    match cli.command {
        TopLevel::Other(Command::Dev(args)) => {
            let _telemetry = tarefa_telemetry::init("tarefa-dev");
            match dev::run(args).await {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("tarefa dev: {error:#}");
                    EXIT_FAILED
                }
            }
        }
        TopLevel::Bench(args) => match bench::run(args, cli.json).await {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("tarefa bench: {error:#}");
                EXIT_FAILED
            }
        },
        TopLevel::Other(command) => {
            let options = match options {
                Ok(options) => options,
                Err(message) => {
                    eprintln!("tarefa: {message}");
                    return EXIT_USAGE;
                }
            };
            run_ops(&cli.scheduler, cli.json, options, command).await
        }
    }
}

/// The token and TLS files of the command line, read.
fn connect_options(cli: &Cli) -> Result<tarefa_client::ConnectOptions, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    Ok(tarefa_client::ConnectOptions {
        token: cli.token.clone().filter(|t| !t.is_empty()),
        ca_cert_pem: cli.ca_cert.as_deref().map(read).transpose()?,
        client_identity_pem: match (&cli.client_cert, &cli.client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        },
        tls_domain: cli.tls_domain.clone(),
    })
}

async fn run_ops(
    scheduler: &str,
    json: bool,
    options: tarefa_client::ConnectOptions,
    command: Command,
) -> i32 {
    {
        match ops::run(scheduler, json, options, command).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("tarefa: {}", ops::escape(&error.to_string()));
                match error.code() {
                    Some(tonic::Code::Unavailable) | None => EXIT_UNAVAILABLE,
                    Some(_) => EXIT_FAILED,
                }
            }
        }
    }
}
