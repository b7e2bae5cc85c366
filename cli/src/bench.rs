//! `tarefa bench`: measures the whole system the way a user runs it. It starts a private
//! `redis-server` (unless `--redis-url`), a `tarefa-scheduler` process and `--executors`
//! `tarefa-executor` processes (found next to this executable), drives `--tasks` tasks over
//! real gRPC from `--producers` concurrent producers, and reports throughput, latencies,
//! peak memory of each process and Redis's own cost per task, next to the raw ceiling of the
//! same Redis (a bare pipelined XADD / XREADGROUP / XACK loop).
//!
//! Modes: the default run; `--duration` (soak: a steady rate, memory over time);
//! `--memory` (memory idle and with `--tasks` waiting); `--baseline` (the plain `fib` loop
//! only). Every process it starts is stopped at the end, on error and on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tarefa_client::{Client, SubmitOptions};
use tarefa_proto as pb;
use tarefa_queue::bench::{Probe, RedisSnapshot};
use tokio::process::{Child, Command};

use crate::dev::RedisChild;

/// The queue every bench task goes to.
const QUEUE: &str = "bench";
/// A queue no executor of the bench serves (the floor probes' submits wait there).
const UNSERVED_QUEUE: &str = "bench-unserved";
/// Tasks run (and waited for) before measuring, so connections and script caches are warm.
const WARMUP_TASKS: u64 = 500;
/// How long the run may go without a single task finishing before it is declared stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What each task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// The built-in `echo` with a tiny payload: measures Tarefa's own overhead.
    Noop,
    /// The built-in `fib` with `--fib-n`.
    Fib,
    /// The built-in `sleep` with `--sleep-ms`.
    Sleep,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Tasks to run (in soak mode the total is --rate × --duration instead).
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// Concurrent producers, each waiting for its previous submit before the next.
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Tasks per submit call: 1 = one SubmitTask per task, more = SubmitTasks.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// gRPC connections the producers share (round robin).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Executor processes.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Tasks each executor runs at once (its --concurrency); default: the executor's default.
    #[arg(long)]
    concurrency: Option<usize>,
    /// What each task does.
    #[arg(long, value_enum, default_value_t = Kind::Noop)]
    kind: Kind,
    /// n for `--kind fib`.
    #[arg(long, default_value_t = 20)]
    fib_n: u64,
    /// Milliseconds for `--kind sleep`.
    #[arg(long, default_value_t = 10)]
    sleep_ms: u64,
    /// Cap on the submit rate in tasks per second, over all producers (0 = no cap).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Soak mode: submit at a steady --rate (default 1000/s) for this many seconds and report
    /// each process's memory over time.
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds between memory samples in soak mode.
    #[arg(long, default_value_t = 5)]
    sample_every: u64,
    /// Memory mode: memory of each process idle, then with --tasks tasks waiting (the queue
    /// paused), Redis memory per waiting task, then the peak while they drain and Redis memory
    /// per finished task.
    #[arg(long)]
    memory: bool,
    /// Only run F(--fib-n) in a plain loop on every core (no services): what `--kind fib`
    /// is compared with.
    #[arg(long)]
    baseline: bool,
    /// Task records read back (with GetTask, after the run) for the latency percentiles.
    #[arg(long, default_value_t = 1000)]
    sample: usize,
    /// Entries for the raw Redis ceiling loop (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    raw_tasks: u64,
    /// Use this Redis instead of starting a private one (the bench's keys are deleted after).
    #[arg(long)]
    redis_url: Option<String>,
    /// Where tarefa-scheduler and tarefa-executor are; default: next to this executable.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Extra argument for the scheduler (repeatable), e.g. --scheduler-arg=--max-batch=5000.
    #[arg(long = "scheduler-arg", allow_hyphen_values = true)]
    scheduler_args: Vec<String>,
    /// Extra argument for every executor (repeatable), e.g. --executor-arg=--read-batch=256.
    #[arg(long = "executor-arg", allow_hyphen_values = true)]
    executor_args: Vec<String>,
}

/// Runs the bench and prints its report (a table, or one JSON object with `json`).
pub(crate) async fn run(args: BenchArgs, json: bool) -> anyhow::Result<()> {
    validate(&args)?;
    if args.baseline {
        let baseline = plain_fib_loop(args.fib_n, args.tasks).await?;
        return print_report(&json!({ "mode": "baseline", "plain_loop": baseline }), json);
    }
    let mut fleet = Fleet::new()?;
    let outcome = tokio::select! {
        result = measure(&args, &mut fleet) => result,
        () = tarefa_scheduler::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let outcome = outcome.map_err(|error| {
        let tails = fleet.log_tails();
        if tails.is_empty() {
            error
        } else {
            anyhow::anyhow!("{error:#}\n{tails}")
        }
    });
    fleet.shutdown().await;
    print_report(&outcome?, json)
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.tasks == 0 || args.producers == 0 || args.batch == 0 || args.connections == 0 {
        bail!("--tasks, --producers, --batch and --connections must be at least 1");
    }
    if args.executors == 0 && !args.baseline {
        bail!("--executors must be at least 1");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a non-negative number");
    }
    Ok(())
}

/// The processes a run starts; all are stopped by [`Fleet::shutdown`] or, failing that,
/// killed when dropped.
struct Fleet {
    redis: Option<RedisChild>,
    redis_url: String,
    /// A namespace of this run's own, so a shared Redis keeps other data apart.
    namespace: String,
    /// Set when the Redis is not ours: the namespace is deleted at the end.
    external_redis: bool,
    scheduler: Option<Proc>,
    executors: Vec<Proc>,
    logs: tempfile::TempDir,
}

struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Fleet {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            redis: None,
            redis_url: String::new(),
            namespace: format!("tarefa-bench-{}", std::process::id()),
            external_redis: false,
            scheduler: None,
            executors: Vec::new(),
            logs: tempfile::Builder::new().prefix("tarefa-bench").tempdir()?,
        })
    }

    fn spawn(&self, binary: &Path, name: &str, args: &[String]) -> anyhow::Result<Proc> {
        let log = self.logs.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_remove(tarefa_telemetry::OTLP_ENDPOINT_ENV)
            .env(
                "RUST_LOG",
                std::env::var("TAREFA_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Proc> {
        self.scheduler.iter().chain(&self.executors)
    }

    /// Fails when a process this run started has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for proc in self.scheduler.iter_mut().chain(&mut self.executors) {
            if let Ok(Some(status)) = proc.child.try_wait() {
                bail!("{} exited unexpectedly ({status})", proc.name);
            }
        }
        Ok(())
    }

    /// The last lines of every process's non-empty log, for an error message; empty when
    /// no process logged anything.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for proc in self.all() {
            let text = std::fs::read_to_string(&proc.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                continue;
            }
            let tail = &lines[lines.len().saturating_sub(5)..];
            out.push_str(&format!(
                "\n[{} log, last lines]\n  {}",
                proc.name,
                tail.join("\n  ")
            ));
        }
        out
    }

    /// SIGTERM to every process, a few seconds to stop, then SIGKILL; the private Redis
    /// last. Deletes the run's keys from a Redis that is not ours.
    async fn shutdown(&mut self) {
        let procs: Vec<Proc> = self
            .scheduler
            .take()
            .into_iter()
            .chain(self.executors.drain(..))
            .collect();
        for proc in &procs {
            if let Ok(pid) = i32::try_from(proc.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for mut proc in procs {
            if tokio::time::timeout(Duration::from_secs(5), proc.child.wait())
                .await
                .is_err()
            {
                let _ = proc.child.kill().await;
            }
        }
        if self.external_redis
            && let Ok(probe) = Probe::connect(&self.redis_url).await
        {
            let _ = probe.delete_namespace(&self.namespace).await;
        }
        // Dropping the child kills it (kill_on_drop) and removes its directory.
        self.redis = None;
    }
}

/// Finds a sibling binary of this executable (or in `--bin-dir`).
fn locate(bin_dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find this executable's path")?
            .parent()
            .map(Path::to_path_buf)
            .context("this executable has no directory")?,
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found in {}: build the services next to `tarefa` first, e.g. \
             `cargo build --release -p tarefa -p tarefa-scheduler -p tarefa-executor` (or \
             `cargo build --release`), then run target/release/tarefa bench; or pass --bin-dir",
            dir.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts Redis (or adopts `--redis-url`), the scheduler and the executors, and returns a
/// connected client once every executor has reported in.
async fn start(args: &BenchArgs, fleet: &mut Fleet) -> anyhow::Result<Vec<Client>> {
    let scheduler_bin = locate(args.bin_dir.as_deref(), "tarefa-scheduler")?;
    let executor_bin = locate(args.bin_dir.as_deref(), "tarefa-executor")?;
    match &args.redis_url {
        Some(url) => {
            fleet.redis_url = url.clone();
            fleet.external_redis = true;
        }
        None => {
            let redis = RedisChild::start().await?;
            fleet.redis_url = redis.url.clone();
            fleet.redis = Some(redis);
        }
    }
    let port = free_port()?;
    let mut scheduler_args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--http-listen",
        "off",
        "--redis-url",
        &fleet.redis_url,
        "--namespace",
        &fleet.namespace,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    scheduler_args.extend(args.scheduler_args.iter().cloned());
    fleet.scheduler = Some(fleet.spawn(&scheduler_bin, "scheduler", &scheduler_args)?);
    for i in 0..args.executors {
        let mut executor_args: Vec<String> = [
            "--redis-url",
            &fleet.redis_url,
            "--namespace",
            &fleet.namespace,
            "--queues",
            QUEUE,
            "--executor-id",
            &format!("bench-{i}"),
            "--shutdown-grace-secs",
            "3",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(concurrency) = args.concurrency {
            executor_args.push(format!("--concurrency={concurrency}"));
        }
        executor_args.extend(args.executor_args.iter().cloned());
        let executor = fleet.spawn(&executor_bin, &format!("executor-{i}"), &executor_args)?;
        fleet.executors.push(executor);
    }

    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        fleet.check_alive()?;
        match Client::connect(endpoint.clone()).await {
            Ok(client) => break client,
            Err(error) if Instant::now() > deadline => {
                bail!("the scheduler did not answer on {endpoint} within 15 s: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut clients = vec![first];
    for _ in 1..args.connections {
        clients.push(Client::connect(endpoint.clone()).await?);
    }
    // Executors heartbeat as soon as they start; wait until all of them have.
    loop {
        fleet.check_alive()?;
        let queues = clients[0].list_queues().await?;
        let reported = queues
            .iter()
            .find(|q| q.name == QUEUE)
            .map_or(0, |q| q.executors.len());
        if reported >= args.executors {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {reported} of {} executors reported in within 15 s",
                args.executors
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(clients)
}

fn request(args: &BenchArgs, options: &SubmitOptions) -> pb::SubmitTaskRequest {
    let (task_type, payload) = match args.kind {
        Kind::Noop => ("echo", b"{\"i\":1}".to_vec()),
        Kind::Fib => ("fib", format!("{{\"n\":{}}}", args.fib_n).into_bytes()),
        Kind::Sleep => (
            "sleep",
            format!("{{\"ms\":{}}}", args.sleep_ms).into_bytes(),
        ),
    };
    options.request(task_type, payload)
}

/// What the producers did.
#[derive(Debug, Default)]
struct Submitted {
    /// Latency of each submit call (µs).
    call_latencies_us: Vec<u64>,
    /// Every `stride`-th task's id, for the latency sample.
    sampled_ids: Vec<String>,
    /// From the first submit's start to the last submit's answer.
    elapsed: Duration,
}

/// Submits `total` tasks from the producers, `batch` per call, paced at `rate` when set.
async fn submit_all(
    args: &BenchArgs,
    clients: &[Client],
    total: u64,
    rate: f64,
    sample: usize,
) -> anyhow::Result<Submitted> {
    let options = SubmitOptions::queue(QUEUE);
    let template = request(args, &options);
    let batch = args.batch as u64;
    let chunks = total.div_ceil(batch);
    let stride = (total / sample.max(1) as u64).max(1);
    let next_chunk = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..args.producers {
        let client = clients[p % clients.len()].clone();
        let next_chunk = next_chunk.clone();
        let template = template.clone();
        producers.spawn(async move {
            let mut out = Submitted::default();
            loop {
                let chunk = next_chunk.fetch_add(1, Ordering::Relaxed);
                if chunk >= chunks {
                    return Ok::<Submitted, anyhow::Error>(out);
                }
                let first = chunk * batch;
                let n = (total - first).min(batch);
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(first as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                let ids: Vec<String> = if batch == 1 {
                    vec![client.submit_raw(template.clone()).await?.task_id]
                } else {
                    let tasks = (0..n).map(|_| template.clone()).collect();
                    client
                        .submit_batch(tasks)
                        .await?
                        .into_iter()
                        .map(|r| r.task_id)
                        .collect()
                };
                out.call_latencies_us
                    .push(sent.elapsed().as_micros() as u64);
                for (i, id) in ids.into_iter().enumerate() {
                    if (first + i as u64).is_multiple_of(stride) {
                        out.sampled_ids.push(id);
                    }
                }
            }
        });
    }
    let mut all = Submitted::default();
    while let Some(joined) = producers.join_next().await {
        let part = joined.context("a producer panicked")??;
        all.call_latencies_us.extend(part.call_latencies_us);
        all.sampled_ids.extend(part.sampled_ids);
    }
    all.elapsed = started.elapsed();
    Ok(all)
}

/// Waits until the queue's succeeded total reaches `target`; returns when it did and how
/// many polls (one `HGET` each) it took. Fails when no task finishes for [`STALL_TIMEOUT`]
/// or a process dies.
async fn wait_succeeded(
    probe: &Probe,
    fleet: &mut Fleet,
    target: u64,
) -> anyhow::Result<(Instant, u64)> {
    let mut last = 0;
    let mut progressed = Instant::now();
    let mut polls = 0;
    loop {
        let now = probe.succeeded_total(&fleet.namespace, QUEUE).await?;
        polls += 1;
        if now >= target {
            return Ok((Instant::now(), polls));
        }
        if now != last {
            last = now;
            progressed = Instant::now();
        } else if progressed.elapsed() > STALL_TIMEOUT {
            fleet.check_alive()?;
            bail!(
                "no task finished for {STALL_TIMEOUT:?}: {now} of {target} succeeded (see the \
                 executor logs below; is the task kind failing?)"
            );
        }
        if progressed.elapsed() > Duration::from_secs(1) {
            fleet.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The p-th percentile (0..=1) of sorted values, or 0 for none.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Reads the sampled tasks and returns (submit→start, submit→finish) in ms, sorted.
async fn record_latencies(
    client: &Client,
    ids: Vec<String>,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    use futures::StreamExt as _;
    let tasks: Vec<Result<pb::Task, tarefa_client::Error>> = futures::stream::iter(ids)
        .map(|id| {
            let client = client.clone();
            async move { client.get(&id).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut to_start = Vec::with_capacity(tasks.len());
    let mut to_finish = Vec::with_capacity(tasks.len());
    for task in tasks {
        let task = task?;
        if task.started_at_ms > 0 {
            to_start.push(task.started_at_ms.saturating_sub(task.created_at_ms));
        }
        if task.finished_at_ms > 0 {
            to_finish.push(task.finished_at_ms.saturating_sub(task.created_at_ms));
        }
    }
    to_start.sort_unstable();
    to_finish.sort_unstable();
    Ok((to_start, to_finish))
}

/// What a submit's latency cannot go below, measured after the run on the same connections:
/// a unary RPC the scheduler answers without Redis (`GetTask` of a malformed id, refused by
/// validation), and a Redis round trip (`PING`). A submit is one of each plus its writes.
/// Interleaved with them, a real `GetTask` of a finished task (`task`), whose floor is the
/// same two.
async fn latency_floors(
    client: &Client,
    probe: &Probe,
    task: Option<&str>,
) -> anyhow::Result<Value> {
    const CALLS: usize = 200;
    let mut rpc = Vec::with_capacity(CALLS);
    let mut redis = Vec::with_capacity(CALLS);
    let mut get = Vec::with_capacity(CALLS);
    let mut quiet_submit = Vec::with_capacity(CALLS);
    let mut served_submit = Vec::with_capacity(CALLS);
    let mut raw = client.raw();
    // A submit to a queue no executor serves costs the scheduler and Redis only; one to the
    // served queue also wakes an executor, which claims and runs the task on the same cores
    // while the answer travels back.
    let unserved = SubmitOptions::queue(UNSERVED_QUEUE);
    let served = SubmitOptions::queue(QUEUE);
    for _ in 0..CALLS {
        let started = Instant::now();
        let answer = raw
            .get_task(pb::GetTaskRequest {
                task_id: String::new(),
            })
            .await;
        rpc.push(started.elapsed().as_micros() as u64);
        match answer {
            Err(status) if status.code() == tonic::Code::InvalidArgument => {}
            other => anyhow::bail!("GetTask of an empty id answered {other:?}"),
        }
        let started = Instant::now();
        probe.ping().await?;
        redis.push(started.elapsed().as_micros() as u64);
        if let Some(task) = task {
            let started = Instant::now();
            raw.get_task(pb::GetTaskRequest {
                task_id: task.to_owned(),
            })
            .await?;
            get.push(started.elapsed().as_micros() as u64);
        }
        for (options, into) in [
            (&unserved, &mut quiet_submit),
            (&served, &mut served_submit),
        ] {
            let started = Instant::now();
            raw.submit_task(options.request("echo", b"{}".to_vec()))
                .await?;
            into.push(started.elapsed().as_micros() as u64);
            // Let the served task finish before the next probe: one task at a time.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    quiet_submit.sort_unstable();
    served_submit.sort_unstable();
    rpc.sort_unstable();
    redis.sort_unstable();
    get.sort_unstable();
    Ok(json!({
        "get_task_p50": (!get.is_empty()).then(|| ms(percentile(&get, 0.50))),
        "get_task_p99": (!get.is_empty()).then(|| ms(percentile(&get, 0.99))),
        "submit_unserved_queue_p50": ms(percentile(&quiet_submit, 0.50)),
        "submit_unserved_queue_p99": ms(percentile(&quiet_submit, 0.99)),
        "submit_served_queue_p50": ms(percentile(&served_submit, 0.50)),
        "submit_served_queue_p99": ms(percentile(&served_submit, 0.99)),
        "rpc_without_redis_p50": ms(percentile(&rpc, 0.50)),
        "rpc_without_redis_p99": ms(percentile(&rpc, 0.99)),
        "redis_ping_p50": ms(percentile(&redis, 0.50)),
        "redis_ping_p99": ms(percentile(&redis, 0.99)),
    }))
}

/// `VmHWM` (peak) and `VmRSS` (now) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time a process used so far (user + system), from `/proc/PID/stat`, in µs.
fn cpu_us(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name; 100 ticks/s.
    (ticks(11) + ticks(12)) * 10_000
}

/// CPU used by each process of the fleet and by this bench process, in µs.
fn fleet_cpu(fleet: &Fleet) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fleet
        .all()
        .map(|p| (p.name.clone(), cpu_us(Some(p.pid))))
        .collect();
    out.push(("bench_client".to_owned(), cpu_us(None)));
    out
}

fn cpu_per_task(before: &[(String, u64)], after: &[(String, u64)], tasks: u64) -> Value {
    let map: serde_json::Map<String, Value> = before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| {
            (
                name.clone(),
                json!(round(a.saturating_sub(*b) as f64 / tasks.max(1) as f64, 1)),
            )
        })
        .collect();
    Value::Object(map)
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Memory of the scheduler and of each executor: `(name, peak MiB, now MiB)`.
fn fleet_memory(fleet: &Fleet) -> Vec<Value> {
    fleet
        .all()
        .map(|p| {
            let (peak, now) = memory_kib(p.pid);
            json!({ "process": p.name, "peak_rss_mib": mib(peak), "rss_mib": mib(now) })
        })
        .collect()
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn redis_cost(before: &RedisSnapshot, after: &RedisSnapshot, tasks: u64, polls: u64) -> Value {
    let tasks = tasks.max(1) as f64;
    // The completion polls (one HGET each) are the bench's, not the system's: left out.
    let by_command: serde_json::Map<String, Value> = after
        .calls_by_command_since(before)
        .into_iter()
        .map(|(name, n)| {
            let n = if name == "hget" {
                n.saturating_sub(polls)
            } else {
                n
            };
            (name, n)
        })
        .filter(|(name, n)| name != "info" && *n > 0)
        .take(12)
        .map(|(name, n)| (name, json!(round(n as f64 / tasks, 2))))
        .collect();
    json!({
        "commands_per_task": round(after.calls_since(before).saturating_sub(polls) as f64 / tasks, 2),
        "cpu_us_per_task": round(after.cpu_since(before) * 1e6 / tasks, 2),
        "commands_per_task_by_command": by_command,
    })
}

/// The whole measured run (after start-up): warm-up, then the mode's measurement.
async fn measure(args: &BenchArgs, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let fib_baseline = if args.kind == Kind::Fib {
        Some(plain_fib_loop(args.fib_n, args.tasks.min(2_000_000)).await?)
    } else {
        None
    };
    let clients = start(args, fleet).await?;
    let probe = Probe::connect(&fleet.redis_url).await?;
    let redis_version = probe.server_version().await?;

    // Warm up: connections, script caches, allocator pools.
    let warm = submit_all(args, &clients, WARMUP_TASKS, 0.0, 1).await?;
    drop(warm);
    wait_succeeded(&probe, fleet, WARMUP_TASKS).await?;

    let mut report = if args.memory {
        memory_mode(args, fleet, &clients, &probe).await?
    } else {
        throughput_mode(args, fleet, &clients, &probe).await?
    };
    if let Some(baseline) = fib_baseline {
        let plain = baseline["tasks_per_s"].as_f64().unwrap_or(0.0);
        let e2e = report["e2e_tasks_per_s"].as_f64().unwrap_or(0.0);
        report["plain_loop"] = baseline;
        report["fib_vs_plain_loop"] = json!(round(e2e / plain.max(1e-9), 4));
    }
    report["setup"] = json!({
        "tasks": args.tasks,
        "producers": args.producers,
        "batch": args.batch,
        "connections": args.connections,
        "executors": args.executors,
        "concurrency": args.concurrency,
        "kind": format!("{:?}", args.kind).to_lowercase(),
        "fib_n": args.fib_n,
        "sleep_ms": args.sleep_ms,
        "rate": args.rate,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "redis_version": redis_version,
        "scheduler_args": args.scheduler_args,
        "executor_args": args.executor_args,
    });
    Ok(report)
}

async fn throughput_mode(
    args: &BenchArgs,
    fleet: &mut Fleet,
    clients: &[Client],
    probe: &Probe,
) -> anyhow::Result<Value> {
    let (total, rate) = match args.duration {
        Some(secs) => {
            let rate = if args.rate > 0.0 { args.rate } else { 1000.0 };
            (((secs as f64) * rate).ceil() as u64, rate)
        }
        None => (args.tasks, args.rate),
    };
    let base = probe.succeeded_total(&fleet.namespace, QUEUE).await?;
    let before = probe.snapshot().await?;
    let cpu_before = fleet_cpu(fleet);
    let started = Instant::now();
    let submit = submit_all(args, clients, total, rate, args.sample);
    let soak = soak_sampler(fleet, probe, args.duration.map(|d| (d, args.sample_every)));
    let (submitted, memory_over_time) = tokio::join!(submit, soak);
    let submitted = submitted?;
    let (finished, polls) = wait_succeeded(probe, fleet, base + total).await?;
    let after = probe.snapshot().await?;
    let cpu_after = fleet_cpu(fleet);
    let e2e = finished.duration_since(started);
    let memory = fleet_memory(fleet);

    let mut calls = submitted.call_latencies_us;
    calls.sort_unstable();
    let sample = submitted.sampled_ids.first().cloned();
    let (to_start, to_finish) = record_latencies(&clients[0], submitted.sampled_ids).await?;
    let floors = latency_floors(&clients[0], probe, sample.as_deref()).await?;
    let raw = if args.raw_tasks > 0 {
        Some(
            tarefa_queue::bench::raw_ceiling(
                &fleet.redis_url,
                &fleet.namespace,
                args.raw_tasks,
                100,
            )
            .await?,
        )
    } else {
        None
    };
    let e2e_per_s = total as f64 / e2e.as_secs_f64().max(1e-9);
    let raw_per_s = raw.map(|r| r.per_second());
    let mut report = json!({
        "mode": if args.duration.is_some() { "soak" } else { "throughput" },
        "tasks": total,
        "submit_tasks_per_s": round(total as f64 / submitted.elapsed.as_secs_f64().max(1e-9), 0),
        "e2e_tasks_per_s": round(e2e_per_s, 0),
        "e2e_seconds": round(e2e.as_secs_f64(), 3),
        "submit_call_ms": {
            "p50": ms(percentile(&calls, 0.50)),
            "p99": ms(percentile(&calls, 0.99)),
            "calls": calls.len(),
        },
        "submit_to_start_ms": {
            "p50": percentile(&to_start, 0.50),
            "p99": percentile(&to_start, 0.99),
            "samples": to_start.len(),
        },
        "submit_to_finish_ms": {
            "p50": percentile(&to_finish, 0.50),
            "p99": percentile(&to_finish, 0.99),
            "samples": to_finish.len(),
        },
        "floor_ms": floors,
        "memory": memory,
        "redis": redis_cost(&before, &after, total, polls),
        "cpu_us_per_task": cpu_per_task(&cpu_before, &cpu_after, total),
        "raw_ceiling_tasks_per_s": raw_per_s.map(|r| round(r, 0)),
        "efficiency": raw_per_s.map(|r| round(e2e_per_s / r.max(1e-9), 3)),
    });
    if let Some(series) = memory_over_time {
        let mut series = series?;
        let mut last = json!({ "t_s": started.elapsed().as_secs(), "after_drain": true });
        for p in fleet.all() {
            last[format!("{}_rss_mib", p.name)] = json!(mib(memory_kib(p.pid).1));
        }
        series.push(last);
        report["memory_over_time"] = json!(series);
    }
    Ok(report)
}

/// In soak mode (`soak` = (duration, sample interval) in seconds), samples each process's
/// RSS and Redis's memory from the start for the soak's duration. `None` when not soaking.
async fn soak_sampler(
    fleet: &Fleet,
    probe: &Probe,
    soak: Option<(u64, u64)>,
) -> Option<anyhow::Result<Vec<Value>>> {
    let (duration, every) = soak?;
    let started = Instant::now();
    let every = Duration::from_secs(every.max(1));
    let end = started + Duration::from_secs(duration);
    let mut series = Vec::new();
    let mut next = started;
    loop {
        let redis = match probe.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(error) => return Some(Err(error.into())),
        };
        let succeeded = probe
            .succeeded_total(&fleet.namespace, QUEUE)
            .await
            .unwrap_or(0);
        let mut sample = json!({
            "t_s": started.elapsed().as_secs(),
            "succeeded_total": succeeded,
            "redis_used_memory_mib": mib(redis.used_memory / 1024),
        });
        for p in fleet.all() {
            sample[format!("{}_rss_mib", p.name)] = json!(mib(memory_kib(p.pid).1));
        }
        series.push(sample);
        next += every;
        if next > end {
            return Some(Ok(series));
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Memory of each process idle, with `--tasks` tasks waiting in a paused queue (and Redis's
/// memory per waiting task), and at its peak while they drain; then Redis's memory per
/// finished task, kept for its result TTL.
async fn memory_mode(
    args: &BenchArgs,
    fleet: &mut Fleet,
    clients: &[Client],
    probe: &Probe,
) -> anyhow::Result<Value> {
    let client = &clients[0];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = fleet_memory(fleet);
    client.pause(QUEUE).await?;
    // Executors learn of the pause at their next heartbeat (at most 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let base = probe.succeeded_total(&fleet.namespace, QUEUE).await?;
    let before = probe.snapshot().await?;
    submit_all(args, clients, args.tasks, 0.0, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = probe.snapshot().await?;
    let waiting = fleet_memory(fleet);
    let drain_started = Instant::now();
    client.resume(QUEUE).await?;
    wait_succeeded(probe, fleet, base + args.tasks).await?;
    let drain = drain_started.elapsed();
    let drained = fleet_memory(fleet);
    // What the finished tasks keep in Redis for their result TTL (records or finished buckets,
    // the `done` index), less what the queue held before.
    let finished = probe.snapshot().await?;
    let per_task = after.used_memory.saturating_sub(before.used_memory) as f64 / args.tasks as f64;
    let per_finished =
        finished.used_memory.saturating_sub(before.used_memory) as f64 / args.tasks as f64;
    Ok(json!({
        "mode": "memory",
        "tasks": args.tasks,
        "idle": idle,
        "with_tasks_waiting": waiting,
        "after_draining": drained,
        "drain_seconds": round(drain.as_secs_f64(), 3),
        "redis_bytes_per_waiting_task": round(per_task, 0),
        "redis_bytes_per_finished_task": round(per_finished, 0),
        "redis_used_memory_mib_waiting": mib(after.used_memory / 1024),
    }))
}

/// F(n) in a plain loop on every core, `tasks` times in all: the work of `--kind fib` without
/// Tarefa around it.
async fn plain_fib_loop(n: u64, tasks: u64) -> anyhow::Result<Value> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let share = tasks / threads + u64::from(t < tasks % threads);
            tokio::task::spawn_blocking(move || {
                let mut digits = 0usize;
                for _ in 0..share {
                    digits += std::hint::black_box(
                        tarefa_executor::builtin::fibonacci(std::hint::black_box(n)).to_string(),
                    )
                    .len();
                }
                digits
            })
        })
        .collect();
    for handle in handles {
        handle.await.context("the plain loop panicked")?;
    }
    let elapsed = started.elapsed();
    Ok(json!({
        "fib_n": n,
        "tasks": tasks,
        "threads": threads,
        "tasks_per_s": round(tasks as f64 / elapsed.as_secs_f64().max(1e-9), 0),
    }))
}

/// Rows printed first in the table, in this order.
const HEADLINE: [&str; 12] = [
    "mode",
    "tasks",
    "e2e_tasks_per_s",
    "submit_tasks_per_s",
    "raw_ceiling_tasks_per_s",
    "efficiency",
    "submit_call_ms.p50",
    "submit_call_ms.p99",
    "submit_to_start_ms.p50",
    "submit_to_start_ms.p99",
    "submit_to_finish_ms.p50",
    "submit_to_finish_ms.p99",
];

fn print_report(report: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    // The numbers people look for first, then everything else in name order.
    let rank = |key: &str| {
        HEADLINE
            .iter()
            .position(|h| key == *h)
            .unwrap_or(HEADLINE.len())
    };
    rows.sort_by_key(|(key, _)| rank(key));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
    Ok(())
}

/// Flattens nested objects into `a.b.c` rows; arrays of objects become `a[i].b` rows.
fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                flatten(&join(key), value, rows);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, rows);
            }
        }
        Value::Null => rows.push((prefix.to_owned(), "-".to_owned())),
        Value::String(text) => rows.push((prefix.to_owned(), text.clone())),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}
