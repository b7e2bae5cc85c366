//! `tarefa dev`: a private redis-server (unless --redis-url), a scheduler and an executor with
//! the demo handlers, in one process; Ctrl-C stops everything and leaves nothing behind.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Use this Redis instead of starting a private one.
    #[arg(long, env = "TAREFA_REDIS_URL")]
    redis_url: Option<String>,
    /// gRPC address of the scheduler.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// HTTP address (health, metrics, dashboard).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: String,
    /// Queues the executor serves.
    #[arg(long, default_value = "default", value_delimiter = ',')]
    queues: Vec<String>,
    /// Tasks the executor runs at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// A redis-server child in a temporary directory, killed on drop.
pub(crate) struct RedisChild {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl RedisChild {
    /// Starts `redis-server` from PATH on a free port.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            // Task records stay compact listpacks with a spec (traceparent included) or a
            // result up to 512 bytes: about half the memory per finished task (README).
            .args(["--hash-max-listpack-value", "512"])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or pass --redis-url")?;
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self {
                    child,
                    url,
                    _dir: dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not start listening on port {port}")
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let redis = match &args.redis_url {
        Some(_) => None,
        None => Some(RedisChild::start().await?),
    };
    let redis_url = match (&args.redis_url, &redis) {
        (Some(url), _) => url.clone(),
        (None, Some(child)) => child.url.clone(),
        (None, None) => bail!("no redis"),
    };
    let mut scheduler_config = tarefa_scheduler::Config::for_redis(&redis_url);
    scheduler_config.listen = args.listen;
    scheduler_config.http_listen = args.http_listen.clone();
    // On loopback the laptop is the only client; beyond it, never an open admin API: an
    // admin token is made for this run and printed.
    let http_beyond_loopback = args
        .http_listen
        .parse::<SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback())
        || args.http_listen.starts_with("0.0.0.0")
        || args.http_listen.starts_with("[::]");
    let token = if !args.listen.ip().is_loopback() || http_beyond_loopback {
        let token = random_token()?;
        scheduler_config.tokens = Some(format!("dev:admin:*:{token}"));
        Some(token)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (use --listen)", args.listen))?;
    let http = tarefa_scheduler::bind_http(&scheduler_config)
        .await
        .with_context(|| format!("cannot listen on {} (use --http-listen)", args.http_listen))?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let grpc_addr = listener.local_addr()?;

    let mut executor_config = tarefa_executor::Config::for_redis(&redis_url);
    executor_config.queues = args.queues.clone();
    executor_config.concurrency = args.concurrency;
    executor_config.shutdown_grace_secs = 5;

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let wait = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let scheduler = tokio::spawn(tarefa_scheduler::run(
        scheduler_config,
        listener,
        http,
        wait(stop.clone()),
    ));
    let executor = tokio::spawn(tarefa_executor::run(
        executor_config,
        tarefa_executor::demo_registry(false),
        wait(stop.clone()),
    ));

    println!();
    println!("  tarefa dev is running");
    println!("  redis      {}", redact(&redis_url));
    println!("  scheduler  grpc://{grpc_addr}");
    if let Some(addr) = http_addr {
        println!("  dashboard  http://{addr}/   (metrics: http://{addr}/metrics)");
    }
    println!(
        "  executor   queues {} · concurrency {}",
        args.queues.join(","),
        args.concurrency
    );
    println!();
    if let Some(token) = &token {
        println!("  token      {token}   (admin; listening beyond this machine)");
        println!("             export TAREFA_TOKEN={token}");
    }
    println!("  try:  tarefa submit fib '{{\"n\": 90}}' --wait");
    println!("  stop: Ctrl-C");
    println!();

    tarefa_scheduler::shutdown_signal().await;
    println!("stopping…");
    let _ = stop_sender.send(true);
    let _ = scheduler.await;
    let _ = executor.await;
    if let Some(redis) = redis {
        redis.stop().await;
    }
    println!("stopped");
    Ok(())
}

/// 32 random bytes as hex, from the OS.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom for a token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
