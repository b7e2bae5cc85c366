//! `tarefa`: the command line. `tarefa dev` runs the whole system on a laptop; the other
//! commands talk to a scheduler over gRPC.

mod bench;
mod dev;
mod ops;

use clap::{Parser, Subcommand};

/// Exit code when the scheduler answered with an error or a task failed.
const EXIT_FAILED: i32 = 1;
/// Exit code when the scheduler could not be reached.
const EXIT_UNAVAILABLE: i32 = 3;

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

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
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
        TopLevel::Other(command) => match ops::run(&cli.scheduler, cli.json, command).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("tarefa: {error}");
                match error.code() {
                    Some(tonic::Code::Unavailable) | None => EXIT_UNAVAILABLE,
                    Some(_) => EXIT_FAILED,
                }
            }
        },
    };
    std::process::exit(code);
}
