//! The test harness: real `redis-server`, real scheduler and executor processes, real gRPC
//! clients. Everything it starts is killed when its handle drops, even when a test panics.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let h = tarefa_tests::Harness::builder().executors(3).start().await?;
//! let fib = h.client.submit(tarefa_client::builtin::Fib { n: 90 }).await?.wait().await?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Multiplies every patience, for slow machines: `TAREFA_TEST_PATIENCE=3`.
pub fn patience(base: Duration) -> Duration {
    let factor: f64 = std::env::var("TAREFA_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    base.mul_f64(factor.max(0.1))
}

/// Polls `check` every 50 ms until it yields `Some`, or fails after `within` (times the
/// patience factor) saying what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience(within);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ports [`free_port`] has handed out in this process: never handed out twice, so two
/// scenarios running in parallel cannot be given the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The lowest port of the kernel's ephemeral range (`ip_local_port_range`): ports the kernel
/// picks for `bind(0)` and for outgoing connections all lie at or above it.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A free TCP port on 127.0.0.1 for a process that cannot bind port 0 itself (redis-server, a
/// Python or Node.js handler, chromedriver).
///
/// It is race-free against everything else the tests do: the port is taken from below the
/// kernel's ephemeral range, where neither `bind(0)` (the schedulers here bind port 0) nor an
/// outgoing connection ever lands, and it is never handed out twice in this process. Only
/// another program picking fixed ports could still take it between this check and the
/// child's `bind`; [`Redis`] retries on another port when that happens.
pub fn free_port() -> u16 {
    let floor = ephemeral_floor().max(2048);
    // Start at a place of its own per test process, so two test binaries run side by side
    // rarely probe the same ports.
    let low = 1024u16;
    let span = floor - low;
    let start = low + (std::process::id() % u32::from(span)) as u16;
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for offset in 0..span {
        let port = low + (start - low + offset) % span;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    // Everything below the ephemeral range is taken: fall back on the kernel's choice.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port");
    handed_out.insert(port);
    port
}

/// The path of a binary built for these tests (next to the test executable's `deps/`). The
/// test package builds its own copies of the three binaries, named `*-test` so they do not
/// collide with the real ones in `target/`; each calls the same `main_from_env` as the real one.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable has no target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the test binaries)",
        path.display()
    );
    path
}

async fn wait_for_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience(within);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listening on port {port} after {within:?}")
}

/// A child process killed (SIGKILL) and reaped on drop; its output goes to a log file.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    name: String,
    log: PathBuf,
    /// Leads a process group of its own, killed whole on drop (see [`Process::start_group`]).
    group: bool,
}

impl Process {
    fn spawn(name: &str, command: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
            log,
            group: false,
        })
    }

    /// The process id, while it runs (`None` once killed and reaped).
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM, …); nothing once the process is reaped. (A
    /// pid of 0 would signal the whole process group: every test's servers.)
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid().filter(|p| p.as_raw() > 0) {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILLs and reaps it (with every process of its group, for [`Process::start_group`]).
    pub fn kill(&mut self) {
        if self.group
            && let Some(pid) = self.pid().filter(|p| p.as_raw() > 0)
        {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit; returns whether it exited 0.
    /// (SIGKILLed when it outlives `within`.)
    pub async fn terminate(&mut self, within: Duration) -> bool {
        self.signal(Signal::SIGTERM);
        self.wait_exit(within)
            .await
            .is_some_and(|status| status.success())
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits up to `within` for a clean exit; returns
    /// whether it exited 0. (SIGKILLed when it outlives `within`.)
    pub async fn interrupt(&mut self, within: Duration) -> bool {
        self.signal(Signal::SIGINT);
        self.wait_exit(within)
            .await
            .is_some_and(|status| status.success())
    }

    /// Waits up to `within` for it to exit and reaps it; SIGKILLs it past that (`None`).
    async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "---- last lines of {} ({}) ----",
                self.name,
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        // SIGCONT first, in case a test left it stopped.
        self.signal(Signal::SIGCONT);
        self.kill();
    }
}

/// A private `redis-server` on a free port with its own directory.
#[derive(Debug)]
pub struct Redis {
    process: Option<Process>,
    port: u16,
    dir: tempfile::TempDir,
    aof_always: bool,
}

impl Redis {
    /// Starts one without persistence.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// Starts one; with `aof_always`, every write is fsynced to the AOF before Redis answers.
    ///
    /// redis-server cannot bind port 0 and tell which port it got, so it is given a
    /// [`free_port`]; should something else have taken that port meanwhile, it is started
    /// again on another one.
    pub async fn start_with(aof_always: bool) -> anyhow::Result<Self> {
        let mut redis = Self {
            process: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            aof_always,
        };
        let mut tries = 0;
        loop {
            match redis.launch().await? {
                Launch::Ready => return Ok(redis),
                Launch::PortTaken if tries < 5 => {
                    tries += 1;
                    redis.port = free_port();
                }
                Launch::PortTaken => bail!("redis-server found every port it was given taken"),
            }
        }
    }

    /// Starts redis-server on `self.port` and waits until it answers PING.
    async fn launch(&mut self) -> anyhow::Result<Launch> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.aof_always {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let log = self.dir.path().join(format!("redis-{}.log", self.port));
        let process = Process::spawn("redis-server", &mut command, log).map_err(|e| {
            e.context("redis-server is required for the tests: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)")
        })?;
        let process = self.process.insert(process);
        // Wait until it has loaded its data set and answers, or has given up on its port.
        let deadline = Instant::now() + patience(Duration::from_secs(10));
        loop {
            if ping(self.port).await {
                return Ok(Launch::Ready);
            }
            if !process.is_running() {
                let log = process.log();
                self.process = None;
                if log.contains("Address already in use") {
                    return Ok(Launch::PortTaken);
                }
                bail!("redis-server on {} exited at start-up:\n{log}", self.port);
            }
            if Instant::now() > deadline {
                bail!("redis-server on {} does not answer PING", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs it (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again on the same port and directory (reloading the AOF if enabled). Its
    /// clients keep their URL, so the port cannot change: should another program have taken
    /// it meanwhile, this fails.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        match self.launch().await? {
            Launch::Ready => Ok(()),
            Launch::PortTaken => bail!("port {} was taken while redis-server was down", self.port),
        }
    }

    /// A synchronous connection, for inspecting and corrupting state in tests.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis")
    }
}

/// How a launch of redis-server ended.
enum Launch {
    /// It answers PING.
    Ready,
    /// It exited because its port was taken.
    PortTaken,
}

/// True when a Redis on 127.0.0.1:`port` answers PING with PONG (not, e.g., `-LOADING`).
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Ok(true))
    )
}

/// A running scheduler process.
#[derive(Debug)]
pub struct Scheduler {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:<port>` for gRPC.
    pub endpoint: String,
    /// `127.0.0.1:<port>` of the HTTP side.
    pub http_addr: String,
}

/// Builds a [`Harness`].
#[derive(Debug, Clone)]
pub struct HarnessBuilder {
    executors: usize,
    executor_args: Vec<String>,
    scheduler_args: Vec<String>,
    aof_always: bool,
    env: Vec<(String, String)>,
    scheduler_env: Vec<(String, String)>,
    client_options: Option<tarefa_client::ConnectOptions>,
    https: bool,
}

/// Redis, a scheduler, executors and a client, all real.
#[derive(Debug)]
pub struct Harness {
    /// The Redis.
    pub redis: Redis,
    /// The scheduler.
    pub scheduler: Scheduler,
    /// The executors, in start order.
    pub executors: Vec<Process>,
    /// A client connected to the scheduler.
    pub client: tarefa_client::Client,
    executor_args: Vec<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    started_executors: usize,
}

impl Harness {
    /// A builder: one executor, default flags.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            executors: 1,
            executor_args: Vec::new(),
            scheduler_args: Vec::new(),
            aof_always: false,
            env: Vec::new(),
            scheduler_env: Vec::new(),
            client_options: None,
            https: false,
        }
    }

    /// Starts another executor with the harness's executor flags plus `extra`.
    pub fn add_executor(&mut self, extra: &[&str]) -> anyhow::Result<usize> {
        self.started_executors += 1;
        let n = self.started_executors;
        let id = format!("executor-{n}");
        let mut command = Command::new(binary("tarefa-executor-test"));
        command
            .args(["--redis-url", &self.redis.url(), "--executor-id", &id])
            .args(&self.executor_args)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = self.dir.path().join(format!("{id}.log"));
        self.executors.push(Process::spawn(&id, &mut command, log)?);
        Ok(self.executors.len() - 1)
    }

    /// Starts the scheduler again (after killing it) on the same gRPC and HTTP ports, so the
    /// client and the HTTP address stay valid.
    pub async fn restart_scheduler(&mut self, extra: &[String]) -> anyhow::Result<()> {
        self.scheduler.process.kill();
        let grpc = self
            .scheduler
            .endpoint
            .trim_start_matches("http://")
            .to_owned();
        let http = self.scheduler.http_addr.clone();
        self.scheduler = start_scheduler(
            &self.redis,
            self.dir.path(),
            (&grpc, &http),
            extra,
            &self.env,
        )
        .await?;
        Ok(())
    }

    /// Waits until `n` executors have sent a heartbeat on `queue`.
    pub async fn wait_for_executors(&self, queue: &str, n: usize) {
        let client = self.client.clone();
        let queue = queue.to_owned();
        eventually(
            &format!("{n} executors heartbeating on {queue}"),
            Duration::from_secs(20),
            || {
                let client = client.clone();
                let queue = queue.clone();
                async move {
                    let queues = client.list_queues().await.ok()?;
                    let q = queues.into_iter().find(|q| q.name == queue)?;
                    (q.executors.len() >= n).then_some(())
                }
            },
        )
        .await;
    }

    /// Waits until `task_id` is in `state` and returns it.
    pub async fn wait_state(
        &self,
        task_id: &str,
        state: tarefa_proto::TaskState,
        within: Duration,
    ) -> tarefa_proto::Task {
        let client = self.client.clone();
        eventually(&format!("task {task_id} to be {state:?}"), within, || {
            let client = client.clone();
            async move {
                let task = client.get(task_id).await.ok()?;
                (task.state() == state).then_some(task)
            }
        })
        .await
    }

    /// Submits `n` `sleep` tasks of `ms` each in one call and waits until every one runs;
    /// returns their ids.
    pub async fn running_sleeps(&self, n: usize, ms: u64) -> anyhow::Result<Vec<String>> {
        let ids: Vec<String> = self
            .client
            .submit_many(
                (0..n).map(|_| tarefa_client::builtin::Sleep { ms }),
                &tarefa_client::SubmitOptions::default(),
            )
            .await?
            .into_iter()
            .map(|t| t.id().to_owned())
            .collect();
        for id in &ids {
            self.wait_state(
                id,
                tarefa_proto::TaskState::Running,
                Duration::from_secs(10),
            )
            .await;
        }
        Ok(ids)
    }

    /// Submits `n` `echo` tasks to the default queue in one `SubmitTasks` (payloads 0..n) and
    /// waits for each to end: their ids and final states, in submit order.
    pub async fn echoes_finished(
        &self,
        n: usize,
    ) -> anyhow::Result<Vec<(String, tarefa_proto::Task)>> {
        let handles = self
            .client
            .submit_many(
                (0..n).map(|i| tarefa_client::builtin::Echo(serde_json::json!(i))),
                &tarefa_client::SubmitOptions::default(),
            )
            .await?;
        let mut finished = Vec::with_capacity(n);
        for handle in handles {
            let task = self.wait_final(handle.id(), Duration::from_secs(20)).await;
            finished.push((handle.id().to_owned(), task));
        }
        Ok(finished)
    }

    /// Waits until `task_id` is in a final state and returns it.
    pub async fn wait_final(&self, task_id: &str, within: Duration) -> tarefa_proto::Task {
        let client = self.client.clone();
        eventually(&format!("task {task_id} to finish"), within, || {
            let client = client.clone();
            async move {
                let task = client.get(task_id).await.ok()?;
                matches!(
                    task.state(),
                    tarefa_proto::TaskState::Succeeded
                        | tarefa_proto::TaskState::Dead
                        | tarefa_proto::TaskState::Cancelled
                )
                .then_some(task)
            }
        })
        .await
    }
}

/// Scheduler starts in this process, to give each its own log file.
static SCHEDULER_STARTS: AtomicUsize = AtomicUsize::new(0);

/// Starts a scheduler listening on `listen` (gRPC, HTTP), and waits until it serves. Given
/// port 0 (as at a first start) it binds whatever port the kernel gives it, which is then read
/// from its log: no other process can take a port between its choice and its use.
async fn start_scheduler(
    redis: &Redis,
    dir: &Path,
    listen: (&str, &str),
    extra: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Scheduler> {
    let n = SCHEDULER_STARTS.fetch_add(1, Ordering::Relaxed) + 1;
    let mut command = Command::new(binary("tarefa-scheduler-test"));
    command
        .args(["--redis-url", &redis.url()])
        .args(["--listen", listen.0])
        .args(["--http-listen", listen.1])
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut process = Process::spawn(
        "scheduler",
        &mut command,
        dir.join(format!("scheduler-{n}.log")),
    )?;
    let deadline = Instant::now() + patience(Duration::from_secs(20));
    let (grpc, http) = loop {
        let log = process.log();
        let grpc = logged_address(&log, "scheduler listening", "grpc");
        let http = logged_address(&log, "scheduler http listening", "http");
        if let (Some(grpc), Some(http)) = (grpc, http) {
            break (grpc, http);
        }
        if !process.is_running() {
            bail!("the scheduler exited at start-up:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("the scheduler did not say where it listens within 20 s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_for_port(grpc.port(), Duration::from_secs(20)).await?;
    Ok(Scheduler {
        process,
        endpoint: format!("http://{grpc}"),
        http_addr: http.to_string(),
    })
}

/// The address in field `field` of the log line saying `message`, in the plain
/// (`message field=addr`) or the JSON (`"field":"addr"`) log format.
fn logged_address(log: &str, message: &str, field: &str) -> Option<SocketAddr> {
    let plain = format!("{field}=");
    let json = format!("\"{field}\":\"");
    log.lines()
        .filter(|line| line.contains(message))
        .find_map(|line| {
            let at = line
                .find(&json)
                .map(|i| i + json.len())
                .or_else(|| line.find(&plain).map(|i| i + plain.len()))?;
            let rest = &line[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
}

impl HarnessBuilder {
    /// How many executors to start.
    pub fn executors(mut self, n: usize) -> Self {
        self.executors = n;
        self
    }

    /// Flags for every executor, e.g. `["--lease-ms", "1000"]`.
    pub fn executor_args(mut self, args: &[&str]) -> Self {
        self.executor_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Flags for the scheduler.
    pub fn scheduler_args(mut self, args: &[&str]) -> Self {
        self.scheduler_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// An environment variable for the scheduler and every executor.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Redis with AOF and `appendfsync always`.
    pub fn aof_always(mut self) -> Self {
        self.aof_always = true;
        self
    }

    /// An environment variable for the scheduler only (after those of [`Self::env`]).
    pub fn scheduler_env(mut self, key: &str, value: &str) -> Self {
        self.scheduler_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Connects the harness's client with these options (a token, TLS files).
    pub fn client_options(mut self, options: tarefa_client::ConnectOptions) -> Self {
        self.client_options = Some(options);
        self
    }

    /// The scheduler serves TLS (its flags say so): its endpoint is `https://`.
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Starts everything and connects the client.
    pub async fn start(self) -> anyhow::Result<Harness> {
        let redis = Redis::start_with(self.aof_always).await?;
        let dir = tempfile::tempdir()?;
        let mut scheduler = start_scheduler(
            &redis,
            dir.path(),
            ("127.0.0.1:0", "127.0.0.1:0"),
            &self.scheduler_args,
            &[self.env.clone(), self.scheduler_env.clone()].concat(),
        )
        .await?;
        if self.https {
            scheduler.endpoint = scheduler.endpoint.replacen("http://", "https://", 1);
        }
        let client = match self.client_options.clone() {
            Some(options) => {
                tarefa_client::Client::connect_with(scheduler.endpoint.clone(), options).await?
            }
            None => tarefa_client::Client::connect(scheduler.endpoint.clone()).await?,
        };
        let mut harness = Harness {
            redis,
            scheduler,
            executors: Vec::new(),
            client,
            executor_args: self.executor_args,
            env: self.env,
            dir,
            started_executors: 0,
        };
        for _ in 0..self.executors {
            harness.add_executor(&[])?;
        }
        Ok(harness)
    }
}

impl Process {
    /// Starts `command` (stdin closed, stdout and stderr to `log`) as a process called `name`;
    /// like the harness's own processes it is killed and reaped on drop, and its log's tail is
    /// printed when a test panics. For processes a test brings along (e.g. a Python handler).
    pub fn start(name: &str, command: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        Self::spawn(name, command, log)
    }

    /// [`Process::start`] for a process that starts processes of its own (`tarefa dev` starts
    /// a `redis-server`): it leads a new process group, and dropping it SIGKILLs the whole
    /// group, so a test that fails half-way leaves none of them behind. (Signals the test
    /// sends, like SIGINT, still go to the leader alone.)
    pub fn start_group(name: &str, command: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0);
        let mut process = Self::spawn(name, command, log)?;
        process.group = true;
        Ok(process)
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`, for `within` times the
/// patience factor.
pub async fn wait_for_listener(port: u16, within: Duration) -> anyhow::Result<()> {
    wait_for_port(port, within).await
}

/// Runs `command` to completion (killed if it outlives `within`, times the patience factor)
/// and returns its stdout; panics with its output, naming it `what`, if it fails.
pub async fn run_to_completion(
    mut command: tokio::process::Command,
    what: &str,
    within: Duration,
) -> String {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(patience(within), command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {within:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The repository's root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `target/` (or `target/<triple>/`): the test executable is in `<it>/debug/deps/`. Scenarios
/// keep what they install (a venv, node modules) there, never in the checkout.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("test executable is in <target>/<profile>/deps")
        .to_owned()
}

/// Runs `command` to completion synchronously (for set-up steps such as `pip install`), and
/// returns its stdout, or an error with its output naming it `what`.
pub fn run_command(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The trace id of a W3C `traceparent`, asserting that it is well formed: version `00`,
/// lowercase hex ids of the right lengths, neither id all zeros.
pub fn trace_id_of(traceparent: &str) -> &str {
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let parts: Vec<&str> = traceparent.split('-').collect();
    let well_formed = matches!(
        parts[..],
        ["00", trace, span, flags]
            if hex(trace, 32) && hex(span, 16) && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0')
    );
    assert!(well_formed, "malformed traceparent {traceparent:?}");
    parts[1]
}

/// A throw-away PKI made at test time (rcgen): a CA, a server certificate for `localhost` and
/// `127.0.0.1`, and client certificates, as PEM files in a temporary directory.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    /// A new CA and a server certificate (`server.pem`, `server-key.pem`, `ca.pem`).
    pub fn new() -> anyhow::Result<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tarefa test ca");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
        let pki = Self {
            dir: tempfile::tempdir()?,
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem())?;
        pki.issue("server", &["localhost", "127.0.0.1"])?;
        Ok(pki)
    }

    /// Issues `<name>.pem` and `<name>-key.pem`, valid for `names` (DNS names or IPs).
    pub fn issue(&self, name: &str, names: &[&str]) -> anyhow::Result<()> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem())?;
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem())?;
        Ok(())
    }

    /// A file of it.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A file's text.
    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_never_repeat_and_stay_out_of_the_kernels_range() {
        let floor = ephemeral_floor();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| *p >= 1024 && *p < floor), "{ports:?}");
    }

    #[test]
    fn addresses_are_read_from_plain_and_json_logs() {
        let plain = "2026-11-29T17:00:00Z  INFO scheduler listening grpc=127.0.0.1:40001\n\
                     2026-11-29T17:00:00Z  INFO scheduler http listening (health, metrics, dashboard) http=127.0.0.1:40002";
        assert_eq!(
            logged_address(plain, "scheduler listening", "grpc"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40001)))
        );
        assert_eq!(
            logged_address(plain, "scheduler http listening", "http"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40002)))
        );
        let json = r#"{"timestamp":"…","level":"INFO","fields":{"message":"scheduler listening","grpc":"127.0.0.1:40003"}}"#;
        assert_eq!(
            logged_address(json, "scheduler listening", "grpc"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40003)))
        );
        assert_eq!(
            logged_address(json, "scheduler http listening", "http"),
            None
        );
    }

    #[tokio::test]
    async fn redis_says_when_its_port_is_taken_and_starts_on_a_free_one() -> anyhow::Result<()> {
        let taken = TcpListener::bind("127.0.0.1:0")?;
        let mut redis = Redis {
            process: None,
            port: taken.local_addr()?.port(),
            dir: tempfile::tempdir()?,
            aof_always: false,
        };
        assert!(matches!(redis.launch().await?, Launch::PortTaken));
        assert!(redis.process.is_none());
        redis.port = free_port();
        assert!(matches!(redis.launch().await?, Launch::Ready));
        assert!(ping(redis.port).await);
        Ok(())
    }
}
