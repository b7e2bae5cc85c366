//! The dashboard, driven in a real headless Chromium through WebDriver (chromedriver), against
//! a real scheduler, executors and Redis.
//!
//! The story: an executor dies while it runs a task with one attempt, so the task goes DEAD
//! ("lease expired"). An operator signs in, finds it among the dead tasks, clicks retry, and
//! watches it succeed on the executor that is still alive. Then they pause and resume a queue,
//! purge dead tasks through the confirmation, cancel a running task from its page, and the page
//! must show a hostile payload as text.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`);
//! their absence fails the test. `CHROMIUM` and `CHROMEDRIVER` override the paths.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use tarefa_client::SubmitOptions;
use tarefa_client::builtin::{Fail, Fib, Sleep};
use tarefa_proto::TaskState;
use tarefa_tests::{Harness, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "dashboard-test-token";
/// How long the browser may take to show a change.
const PATIENCE: Duration = Duration::from_secs(30);
/// The key of an element reference in WebDriver replies.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const JAEGER: &str = "http://jaeger.invalid:16686";
const XSS: &str = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script>";

// ---- a minimal HTTP/1.1 client (loopback only: chromedriver and the dashboard API) ----

/// One request; returns the status and the body.
async fn http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        // Read by the framing: chromedriver keeps the connection open despite `close`.
        let mut raw = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                let body = &raw[split + 4..];
                let length = head.lines().find_map(|line| {
                    let value = line.strip_prefix("content-length:")?;
                    value.trim().parse::<usize>().ok()
                });
                let complete = match length {
                    Some(length) => body.len() >= length,
                    None if head.contains("transfer-encoding: chunked") => {
                        body.ends_with(b"0\r\n\r\n")
                    }
                    None => false,
                };
                if complete {
                    return anyhow::Ok((head, body.to_vec()));
                }
            }
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                let split = raw
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .context("no end of headers")?;
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                return anyhow::Ok((head, raw[split + 4..].to_vec()));
            }
            raw.extend_from_slice(&buffer[..n]);
        }
    };
    let (head, mut body) = tokio::time::timeout(Duration::from_secs(120), exchange)
        .await
        .with_context(|| format!("{method} {path}: no answer"))??;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8(body)?))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let start = line_end + 2;
        out.extend_from_slice(data.get(start..start + size).context("short chunk")?);
        data = data.get(start + size + 2..).context("short chunk")?;
    }
}

// ---- a minimal WebDriver client ----

/// chromedriver (in its own process group, with the Chromium it starts) and one session.
/// Dropping it kills the group.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

fn tool(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: the dashboard test drives a real headless Chromium. Install it: \
         `apt-get install chromium chromium-driver` (or set {variable} to its path)",
        path.display()
    );
    path
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
        let profile = tempfile::tempdir()?;
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        let mut browser = Self {
            driver,
            addr: format!("127.0.0.1:{port}"),
            session: String::new(),
            _profile: profile,
        };
        let addr = browser.addr.clone();
        eventually("chromedriver to be ready", PATIENCE, || {
            let addr = addr.clone();
            async move {
                let (_, body) = http("GET", &addr, "/status", &[], "").await.ok()?;
                let status: Value = serde_json::from_str(&body).ok()?;
                (status["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let user_data_dir = format!("--user-data-dir={}", browser._profile.path().display());
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                    user_data_dir,
                ],
            },
        }}});
        let reply = browser.raw("POST", "/session", Some(capabilities)).await?;
        browser.session = reply["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = http(
            method,
            &self.addr,
            path,
            &[("Content-Type", "application/json; charset=utf-8")],
            &body,
        )
        .await?;
        let reply: Value =
            serde_json::from_str(&text).with_context(|| format!("{path}: not JSON: {text}"))?;
        if status != 200 {
            bail!("webdriver {method} {path}: {status} {}", reply["value"]);
        }
        Ok(reply["value"].clone())
    }

    async fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .command(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(found[ELEMENT].as_str().context("no element id")?.to_owned())
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css).await?;
        let text = self
            .command("GET", &format!("/element/{id}/text"), None)
            .await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    async fn try_click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await?;
        Ok(())
    }

    /// Clicks `css` once it exists and can be clicked (the page re-renders while it polls).
    async fn click(&self, css: &str) {
        eventually(&format!("to click {css}"), PATIENCE, move || async move {
            self.try_click(css).await.ok()
        })
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    /// Waits until the text of `css` satisfies `check`, and returns it.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let check = &check;
        eventually(what, PATIENCE, move || async move {
            self.text(css).await.ok().filter(|t| check(t))
        })
        .await
    }

    async fn script(&self, script: &str) -> anyhow::Result<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let data = self.command("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().context("no screenshot data")?)?;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    async fn quit(mut self) {
        let session = std::mem::take(&mut self.session);
        let _ = self
            .raw("DELETE", &format!("/session/{session}"), None)
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

// ---- the scenario ----

fn queue_card(queue: &str) -> String {
    format!("article.queue[data-queue=\"{queue}\"]")
}

/// What the scenario sets up before the browser looks at it.
struct Scene {
    h: Harness,
    http_addr: String,
    base: String,
    succeeded_id: String,
    hostile_id: String,
    mail_id: String,
    bounced: Vec<String>,
}

#[tokio::test]
async fn operator_retries_a_dead_task_from_the_dashboard() -> anyhow::Result<()> {
    // Fail fast, before anything starts, when the browser is not installed.
    tool("CHROMIUM", "/usr/bin/chromium");
    tool("CHROMEDRIVER", "/usr/bin/chromedriver");
    // Boxed: the whole scenario as one future overflows a test thread's stack in debug builds.
    let scene = Box::pin(set_scene()).await?;
    Box::pin(check_api(&scene)).await?;
    Box::pin(drive_browser(&scene)).await
}

async fn set_scene() -> anyhow::Result<Scene> {
    let mut h = Harness::builder()
        .executor_args(&["--lease-ms", "1000"])
        .scheduler_args(&["--dashboard-token", TOKEN, "--jaeger-url", JAEGER])
        .start()
        .await?;
    let http_addr = h.scheduler.http_addr.clone();
    let base = format!("http://{http_addr}");
    eventually("the scheduler's http port", PATIENCE, || {
        let addr = http_addr.clone();
        async move {
            let (status, _) = http("GET", &addr, "/healthz", &[], "").await.ok()?;
            (status == 200).then_some(())
        }
    })
    .await;

    // Something to look at: finished work, a dead task with a hostile message, a task waiting
    // for its retry, and a queue of scheduled tasks.
    let mut fibs = Vec::new();
    for n in [10, 20, 30, 40, 50, 60, 70, 80, 90] {
        fibs.push(h.client.submit(Fib { n }).await?);
    }
    let hostile = h
        .client
        .submit_with(
            Fail {
                message: XSS.to_owned(),
                permanent: false,
            },
            &SubmitOptions {
                max_attempts: Some(1),
                ..SubmitOptions::default()
            },
        )
        .await?;
    h.client
        .submit_with(
            Fail {
                message: "upstream said 503".to_owned(),
                permanent: false,
            },
            &SubmitOptions {
                max_attempts: Some(5),
                backoff_initial: Some(Duration::from_secs(3600)),
                ..SubmitOptions::default()
            },
        )
        .await?;
    for ms in [100, 200, 300] {
        h.client
            .submit_with(
                Sleep { ms },
                &SubmitOptions {
                    queue: Some("reports".to_owned()),
                    delay: Some(Duration::from_secs(3600)),
                    ..SubmitOptions::default()
                },
            )
            .await?;
    }
    for fib in &fibs {
        fib.wait().await?;
    }
    let hostile_task = h.wait_final(hostile.id(), PATIENCE).await;
    assert_eq!(hostile_task.state(), TaskState::Dead);

    // The executor of queue `mail` dies mid-task; another one takes the expired lease back,
    // and with one attempt allowed the task is DEAD.
    let doomed = h.add_executor(&["--queues", "mail"])?;
    let mail = h
        .client
        .submit_with(
            Sleep { ms: 5000 },
            &SubmitOptions {
                queue: Some("mail".to_owned()),
                max_attempts: Some(1),
                ..SubmitOptions::default()
            },
        )
        .await?;
    let mail_id = mail.id().to_owned();
    eventually("the mail task to run", PATIENCE, || {
        let client = h.client.clone();
        let id = mail_id.clone();
        async move {
            let task = client.get(&id).await.ok()?;
            (task.state() == TaskState::Running).then_some(())
        }
    })
    .await;
    h.executors[doomed].kill();
    h.add_executor(&["--queues", "mail"])?;
    let dead = h.wait_final(&mail_id, PATIENCE).await;
    assert_eq!(dead.state(), TaskState::Dead, "{dead:?}");
    assert!(
        dead.last_error.contains("lease expired"),
        "{}",
        dead.last_error
    );
    // Two more dead tasks in `mail`, so the list has company.
    let mut bounced = Vec::new();
    for message in [
        "smtp: 550 mailbox unavailable",
        "smtp: 552 message too large",
    ] {
        let handle = h
            .client
            .submit_with(
                Fail {
                    message: message.to_owned(),
                    permanent: true,
                },
                &SubmitOptions {
                    queue: Some("mail".to_owned()),
                    ..SubmitOptions::default()
                },
            )
            .await?;
        bounced.push(handle.id().to_owned());
    }
    for id in &bounced {
        assert_eq!(h.wait_final(id, PATIENCE).await.state(), TaskState::Dead);
    }

    Ok(Scene {
        succeeded_id: fibs[0].id().to_owned(),
        hostile_id: hostile.id().to_owned(),
        h,
        http_addr,
        base,
        mail_id,
        bounced,
    })
}

/// The JSON API's statuses.
async fn check_api(scene: &Scene) -> anyhow::Result<()> {
    let Scene {
        http_addr,
        succeeded_id,
        ..
    } = scene;
    let bearer = format!("Bearer {TOKEN}");
    let authorized = [("Authorization", bearer.as_str())];
    let api = |method: &'static str, path: String, headers: Vec<(&'static str, String)>| {
        let addr = http_addr.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http(method, &addr, &path, &headers, "").await
        }
    };
    let (status, body) = api("GET", "/api/queues".into(), vec![]).await?;
    assert_eq!(status, 200, "{body}");
    let queues: Value = serde_json::from_str(&body)?;
    let names: Vec<&str> = queues["queues"]
        .as_array()
        .context("queues")?
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, ["default", "mail", "reports"]);
    let (status, _) = api("GET", "/api/tasks/nonsense".into(), vec![]).await?;
    assert_eq!(status, 400);
    let missing = "/api/tasks/default:01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned();
    assert_eq!(api("GET", missing, vec![]).await?.0, 404);
    let (status, body) = api("GET", "/api/tasks?queue=default&state=bogus".into(), vec![]).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("state"), "{body}");
    let pause = "/api/queues/default/pause".to_owned();
    assert_eq!(api("POST", pause.clone(), vec![]).await?.0, 401);
    let wrong = vec![("Authorization", "Bearer wrong".to_owned())];
    assert_eq!(api("POST", pause.clone(), wrong).await?.0, 401);
    let cross_site = vec![
        ("Authorization", bearer.clone()),
        ("Origin", "http://evil.example".to_owned()),
    ];
    assert_eq!(api("POST", pause, cross_site).await?.0, 403);
    let retry_done = format!("/api/tasks/{succeeded_id}/retry");
    let (status, body) = http("POST", http_addr, &retry_done, &authorized, "").await?;
    assert_eq!(status, 409, "retrying a SUCCEEDED task: {body}");
    let (status, body) = http(
        "POST",
        http_addr,
        "/api/queues/reports/retry-dead",
        &authorized,
        "",
    )
    .await?;
    assert_eq!(
        (status, body.contains("\"retried\":0")),
        (200, true),
        "{body}"
    );

    Ok(())
}

/// The operator's clicks, in a real browser.
async fn drive_browser(scene: &Scene) -> anyhow::Result<()> {
    let Scene {
        h,
        base,
        hostile_id,
        mail_id,
        bounced,
        ..
    } = scene;
    let browser = Browser::start().await?;
    let b = &browser;
    b.goto(base).await?;
    let mail_card = queue_card("mail");
    b.wait_text(
        &format!("{mail_card} .count-dead .num"),
        "the mail queue to show three dead tasks",
        |t| t == "3",
    )
    .await;
    b.wait_text("#auth", "the page to say actions need signing in", |t| {
        t.contains("sign in")
    })
    .await;
    b.click("#signin-toggle").await;
    b.type_into("#login-token", TOKEN).await?;
    b.click("#login-submit").await;
    b.wait_text("#auth", "the page to say signed in", |t| t == "signed in")
        .await;

    // The dead tasks of `mail`, from the queue's dead count.
    b.click(&format!("{mail_card} a.count-dead")).await;
    let row = format!("tr[data-task-id=\"{mail_id}\"]");
    b.wait_text(
        &format!("{row} .row-error"),
        "the dead task's row with its error",
        |t| t.contains("lease expired"),
    )
    .await;
    b.wait_text(
        &format!("{} .count-dead .num", queue_card("default")),
        "default's dead count",
        |t| t == "1",
    )
    .await;
    b.script("document.getElementById('toast').hidden = true; return null")
        .await?;
    // The README's screenshot is refreshed only on request, so a test run leaves the checkout
    // clean: TAREFA_UPDATE_SCREENSHOT=1 cargo test -p tarefa-tests dashboard
    let screenshot = if std::env::var_os("TAREFA_UPDATE_SCREENSHOT").is_some() {
        tarefa_tests::workspace_root().join("docs/dashboard.png")
    } else {
        std::env::temp_dir().join(format!("tarefa-dashboard-{}.png", std::process::id()))
    };
    b.screenshot(&screenshot).await?;

    // Retry it from its row; the executor that is alive runs it to success.
    b.click(&format!("{row} button.task-retry")).await;
    b.goto(&format!("{base}/#/task/{mail_id}")).await?;
    b.wait_text(
        "#task-state",
        "the retried task to succeed, shown without a reload",
        |t| t == "SUCCEEDED",
    )
    .await;
    let errors = b.text("#task-errors").await?;
    assert!(errors.contains("lease expired"), "{errors}");
    let result = b.text("#task-result").await?;
    assert!(result.contains("\"slept_ms\": 5000"), "{result}");
    let progress = b.text("#task-progress-text").await?;
    assert!(progress.starts_with("100%"), "{progress}");
    let succeeded = h.client.get(mail_id).await?;
    assert_eq!(succeeded.state(), TaskState::Succeeded);
    assert!(!succeeded.trace_id.is_empty());
    let trace_link = b
        .script("return document.querySelector('a#task-trace').getAttribute('href')")
        .await?;
    assert_eq!(
        trace_link,
        json!(format!("{JAEGER}/trace/{}", succeeded.trace_id))
    );

    // A hostile error message and payload are shown as text, never run.
    b.goto(&format!("{base}/#/task/{hostile_id}")).await?;
    let shown = b
        .wait_text("#task-errors", "the hostile error, as text", |t| {
            t.contains("onerror")
        })
        .await;
    assert!(shown.contains(XSS), "{shown}");
    assert!(b.text("#task-payload").await?.contains("<script>"));
    let clean = b
        .script(
            "return window.__xss === undefined && \
             document.querySelectorAll('#task-view img, #task-view script').length === 0",
        )
        .await?;
    assert_eq!(clean, json!(true), "markup from a task was interpreted");

    // Pause and resume `default`; the button's label follows.
    b.goto(&format!("{base}/#/")).await?;
    let default_card = queue_card("default");
    let toggle = format!("{default_card} button.pause-toggle");
    b.wait_text(&toggle, "the pause button", |t| t == "Pause")
        .await;
    b.click(&toggle).await;
    b.wait_text(&toggle, "the button to offer resume", |t| t == "Resume")
        .await;
    b.wait_text(
        &format!("{default_card} .paused-badge"),
        "the paused badge",
        |t| t.eq_ignore_ascii_case("paused"),
    )
    .await;
    let paused = h.client.list_queues().await?;
    assert!(paused.iter().any(|q| q.name == "default" && q.paused));
    b.click(&toggle).await;
    b.wait_text(&toggle, "the button to offer pause again", |t| t == "Pause")
        .await;
    let resumed = h.client.list_queues().await?;
    assert!(resumed.iter().any(|q| q.name == "default" && !q.paused));

    // Purge default's dead task, through the confirmation.
    b.click(&format!("{default_card} button.purge-dead")).await;
    let question = b
        .wait_text(
            &format!("{default_card} .confirm-text"),
            "the purge confirmation",
            |t| t.contains("for good"),
        )
        .await;
    assert!(question.contains("1 dead task"), "{question}");
    b.click(&format!("{default_card} button.purge-confirm"))
        .await;
    b.wait_text(
        &format!("{default_card} .count-dead .num"),
        "default's dead count to drop to 0",
        |t| t == "0",
    )
    .await;
    let purged = h.client.get(hostile_id).await;
    assert!(purged.is_err(), "the purged task is still readable");

    // Retry every dead task of `mail` at once: the two bounced ones (they fail again).
    b.click(&format!("{} button.retry-dead", queue_card("mail")))
        .await;
    b.wait_text("#toast", "the retry-dead report", |t| {
        t.contains("2 dead task(s) of mail requeued")
    })
    .await;
    for id in bounced {
        let task = h.wait_final(id, PATIENCE).await;
        assert_eq!(task.errors.len(), 2, "{task:?}");
    }

    // Cancel a running task from its page: its executor stops the handler.
    let long = h.client.submit(Sleep { ms: 600_000 }).await?;
    let long_id = long.id().to_owned();
    b.goto(&format!("{base}/#/task/{long_id}")).await?;
    b.wait_text("#task-state", "the long task shown running", |t| {
        t == "RUNNING"
    })
    .await;
    b.click("#task-cancel").await;
    b.wait_text(
        "#task-state",
        "the cancelled task, shown without a reload",
        |t| t == "CANCELLED",
    )
    .await;
    let cancelled = h.client.get(&long_id).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled, "{cancelled:?}");
    assert!(cancelled.result.is_empty(), "{cancelled:?}");

    browser.quit().await;
    Ok(())
}
