//! Who may do what, proven against a real scheduler: every RPC and every dashboard action
//! × {no token, read, submit, admin, a token for another queue}; sessions that are not the
//! token and end on sign-out; the audit log; the Host check; protected metrics; TLS and mTLS
//! with certificates made at test time; and the limits an open port needs.

use std::time::Duration;

use anyhow::Context as _;
use tarefa_client::ConnectOptions;
use tarefa_proto as pb;
use tarefa_tests::{Harness, TestPki, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

const ADMIN: &str = "admin-secret-0123456789";
const READER: &str = "reader-secret-0123456789";
const SUBMITTER: &str = "submitter-secret-0123456789";
const MAIL_ADMIN: &str = "mail-admin-secret-0123456789";
const SUBMITTER_AND_READER: &str = "producer-secret-0123456789";

fn tokens() -> String {
    format!(
        "admin:admin:*:{ADMIN};reader:read:*:{READER};submitter:submit:*:{SUBMITTER};\
         mailadmin:admin:mail:{MAIL_ADMIN};producer:submit,read:*:{SUBMITTER_AND_READER}"
    )
}

fn with_token(token: &str) -> ConnectOptions {
    ConnectOptions {
        token: Some(token.to_owned()),
        ..ConnectOptions::default()
    }
}

/// One raw HTTP/1.1 exchange: status, headers (lowercase) and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("Host: {addr}\r\n"));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .context("no answer")??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// The five callers of the matrix, by name, with their token.
fn callers() -> [(&'static str, Option<&'static str>); 5] {
    [
        ("none", None),
        ("read", Some(READER)),
        ("submit", Some(SUBMITTER)),
        ("admin", Some(ADMIN)),
        ("wrong-queue", Some(MAIL_ADMIN)),
    ]
}

/// What an RPC or action is expected to give each caller: refused as UNAUTHENTICATED,
/// PERMISSION_DENIED, or allowed (any answer that is not an auth refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unauthenticated,
    Denied,
    Allowed,
}

fn expected(scope: &str, caller: &str) -> Expect {
    match (scope, caller) {
        (_, "none") => Expect::Unauthenticated,
        (_, "admin") => Expect::Allowed,
        ("read", "read") | ("submit", "submit") => Expect::Allowed,
        // A token for `mail` only: lists show it nothing of `default`, everything else is
        // refused on `default`.
        ("list-queues", "wrong-queue") => Expect::Allowed,
        ("list-queues", "read") => Expect::Allowed,
        _ => Expect::Denied,
    }
}

fn verdict(code: Code) -> Expect {
    match code {
        Code::Unauthenticated => Expect::Unauthenticated,
        Code::PermissionDenied => Expect::Denied,
        _ => Expect::Allowed,
    }
}

fn http_verdict(status: u16) -> Expect {
    match status {
        401 => Expect::Unauthenticated,
        403 => Expect::Denied,
        _ => Expect::Allowed,
    }
}

#[tokio::test]
async fn every_rpc_and_dashboard_action_checks_its_scope_and_queue() -> anyhow::Result<()> {
    let h = Harness::builder()
        .env("TAREFA_TOKENS", &tokens())
        .client_options(with_token(ADMIN))
        .start()
        .await?;
    let task = h
        .client
        .submit(tarefa_client::builtin::Fib { n: 10 })
        .await?;
    h.wait_final(task.id(), Duration::from_secs(30)).await;
    let task_id = task.id().to_owned();

    let mut failures = Vec::new();
    for (caller, token) in callers() {
        let client = match token {
            Some(token) => {
                tarefa_client::Client::connect_with(h.scheduler.endpoint.clone(), with_token(token))
                    .await?
            }
            None => {
                tarefa_client::Client::connect_with(
                    h.scheduler.endpoint.clone(),
                    ConnectOptions::default(),
                )
                .await?
            }
        };
        let submit = || pb::SubmitTaskRequest {
            queue: "default".to_owned(),
            task_type: "echo".to_owned(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        let code = |r: Result<(), tarefa_client::Error>| match r {
            Ok(()) => Code::Ok,
            Err(error) => error.code().unwrap_or(Code::Unknown),
        };
        let results: Vec<(&str, &str, Code)> = vec![
            (
                "SubmitTask",
                "submit",
                code(client.submit_raw(submit()).await.map(drop)),
            ),
            (
                "SubmitTasks",
                "submit",
                code(client.submit_batch(vec![submit()]).await.map(drop)),
            ),
            (
                "GetTask",
                "read",
                code(client.get(&task_id).await.map(drop)),
            ),
            (
                "WatchTask",
                "read",
                code(match client.watch(&task_id).await {
                    Ok(mut stream) => {
                        use futures::StreamExt as _;
                        match stream.next().await {
                            Some(Err(error)) => Err(error),
                            _ => Ok(()),
                        }
                    }
                    Err(error) => Err(error),
                }),
            ),
            (
                "ListTasks",
                "read",
                code(
                    client
                        .list_tasks(pb::ListTasksRequest {
                            queue: "default".to_owned(),
                            state: pb::TaskState::Succeeded as i32,
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                ),
            ),
            (
                "ListQueues",
                "list-queues",
                code(client.list_queues().await.map(|queues| {
                    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
                    if caller == "wrong-queue" {
                        assert!(!names.contains(&"default"), "{names:?}");
                    }
                })),
            ),
            (
                "CancelTask",
                "admin",
                code(client.cancel(&task_id).await.map(drop)),
            ),
            (
                "RetryTask",
                "admin",
                code(client.retry(&task_id).await.map(drop)),
            ),
            (
                "PauseQueue",
                "admin",
                code(client.pause("default").await.map(drop)),
            ),
            (
                "ResumeQueue",
                "admin",
                code(client.resume("default").await.map(drop)),
            ),
            (
                "PurgeDeadTasks",
                "admin",
                code(client.purge_dead("default").await.map(drop)),
            ),
            (
                "RetryDeadTasks",
                "admin",
                code(client.retry_dead("default").await.map(drop)),
            ),
            (
                "ReportProgress",
                "submit",
                code(client.report_progress(&task_id, 1, 0.5, "half").await),
            ),
        ];
        for (rpc, scope, code) in results {
            let want = expected(scope, caller);
            if verdict(code) != want {
                failures.push(format!("{rpc} as {caller}: got {code:?}, want {want:?}"));
            }
        }
    }

    // The dashboard's API, with the same tokens as bearer headers.
    let addr = h.scheduler.http_addr.clone();
    let actions: Vec<(&str, String, &str)> = vec![
        ("GET", "/api/queues".to_owned(), "list-queues"),
        (
            "GET",
            "/api/tasks?queue=default&state=succeeded".to_owned(),
            "read",
        ),
        ("GET", format!("/api/tasks/{task_id}"), "read"),
        ("POST", format!("/api/tasks/{task_id}/retry"), "admin"),
        ("POST", format!("/api/tasks/{task_id}/cancel"), "admin"),
        ("POST", "/api/queues/default/pause".to_owned(), "admin"),
        ("POST", "/api/queues/default/resume".to_owned(), "admin"),
        ("POST", "/api/queues/default/purge-dead".to_owned(), "admin"),
        ("POST", "/api/queues/default/retry-dead".to_owned(), "admin"),
    ];
    for (caller, token) in callers() {
        for (method, path, scope) in &actions {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("Authorization", b)])
                .unwrap_or_default();
            let (status, _, body) = http(&addr, method, path, &headers).await?;
            let want = expected(scope, caller);
            if http_verdict(status) != want {
                failures.push(format!(
                    "{method} {path} as {caller}: got {status} ({body}), want {want:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every admin action is audited with the token's name, in the log and in a metric.
    let log = h.scheduler.process.log();
    assert!(
        log.lines().any(|l| l.contains("admin action")
            && l.contains("who=admin")
            && l.contains("action=\"pause\"")),
        "no audit line for admin's pause:\n{log}"
    );
    for via in ["grpc", "dashboard"] {
        assert!(
            log.lines().any(|l| l.contains("admin action")
                && l.contains("who=reader")
                && l.contains(&format!("via=\"{via}\""))
                && l.contains("outcome=\"denied\"")),
            "no audit line for reader's refused action via {via}"
        );
    }
    let (_, _, metrics) = http(&addr, "GET", "/metrics", &[]).await?;
    assert!(
        metrics.contains("tarefa_scheduler_admin_actions_total{")
            && metrics.contains("token=\"admin\""),
        "{metrics}"
    );
    assert!(!log.contains(ADMIN), "a token was logged");
    Ok(())
}

#[tokio::test]
async fn dashboard_sessions_hosts_and_protected_metrics() -> anyhow::Result<()> {
    let h = Harness::builder()
        .env("TAREFA_TOKENS", &tokens())
        .scheduler_args(&["--protect-metrics", "--protect-health"])
        .client_options(with_token(ADMIN))
        .start()
        .await?;
    let addr = h.scheduler.http_addr.clone();
    // Up: the health check needs a token now.
    let bearer = format!("Bearer {READER}");
    eventually("the http port", Duration::from_secs(20), || {
        let addr = addr.clone();
        let bearer = bearer.clone();
        async move {
            let (status, _, _) = http(&addr, "GET", "/healthz", &[("Authorization", &bearer)])
                .await
                .ok()?;
            (status == 200).then_some(())
        }
    })
    .await;
    assert_eq!(http(&addr, "GET", "/healthz", &[]).await?.0, 401);
    assert_eq!(http(&addr, "GET", "/metrics", &[]).await?.0, 401);
    let (status, _, metrics) =
        http(&addr, "GET", "/metrics", &[("Authorization", &bearer)]).await?;
    assert_eq!(status, 200);
    assert!(metrics.contains("tarefa_redis_up 1"), "{metrics}");
    let wrong = "Bearer not-a-token-anyone-issued";
    assert_eq!(
        http(&addr, "GET", "/metrics", &[("Authorization", wrong)])
            .await?
            .0,
        401
    );

    // Sign-in opens a session whose cookie is not the token; sign-out ends it on the server.
    let login = format!("/api/login?token={ADMIN}");
    let (status, _, _) = http(&addr, "POST", &login, &[]).await?;
    assert_ne!(
        status, 200,
        "the token must come in the form body, not the URL"
    );
    let (status, head, body) = {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(&addr).await?;
            let form = format!("token={ADMIN}");
            let request = format!(
                "POST /api/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                form.len()
            );
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
        };
        let text = exchange.await?;
        let (head, body) = text.split_once("\r\n\r\n").context("headers")?;
        let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
        (status, head.to_owned(), body.to_owned())
    };
    assert_eq!(status, 200, "{head}\n{body}");
    let cookie = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie:")
                .then(|| l["set-cookie:".len()..].trim().to_owned())
        })
        .context("no session cookie")?;
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(ADMIN),
        "the cookie carries the token: {cookie}"
    );
    let session = cookie.split(';').next().context("cookie")?.to_owned();
    let pause = "/api/queues/default/pause";
    assert_eq!(
        http(&addr, "POST", pause, &[("Cookie", &session)]).await?.0,
        200
    );
    let (_, _, who) = http(&addr, "GET", "/api/session", &[("Cookie", &session)]).await?;
    assert!(who.contains("\"name\":\"admin\""), "{who}");
    assert_eq!(
        http(&addr, "POST", "/api/logout", &[("Cookie", &session)])
            .await?
            .0,
        200
    );
    assert_eq!(
        http(&addr, "POST", pause, &[("Cookie", &session)]).await?.0,
        401
    );

    // An operator revokes every session of a token: the cookie stops working at once.
    let login = |token: &'static str| {
        let addr = addr.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await?;
            let form = format!("token={token}");
            let request = format!(
                "POST /api/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                form.len()
            );
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let cookie = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("set-cookie: ")
                        .or_else(|| l.strip_prefix("Set-Cookie: "))
                })
                .and_then(|c| c.split(';').next())
                .map(str::to_owned)
                .context("no session cookie")?;
            anyhow::Ok(cookie)
        }
    };
    let reader_session = login(READER).await?;
    let queues = "/api/queues";
    let admin_bearer = format!("Bearer {ADMIN}");
    assert_eq!(
        http(&addr, "GET", queues, &[("Cookie", &reader_session)])
            .await?
            .0,
        200
    );
    let revoke = "/api/sessions/reader/revoke";
    let reader_bearer = format!("Bearer {READER}");
    assert_eq!(
        http(&addr, "POST", revoke, &[("Authorization", &reader_bearer)])
            .await?
            .0,
        403,
        "a reader may not revoke sessions"
    );
    let (status, _, body) =
        http(&addr, "POST", revoke, &[("Authorization", &admin_bearer)]).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"revoked\":1"), "{body}");
    assert_eq!(
        http(&addr, "GET", queues, &[("Cookie", &reader_session)])
            .await?
            .0,
        401
    );

    // DNS rebinding: a page under another name reaches this port; its Host gives it away.
    let admin = format!("Bearer {ADMIN}");
    let rebind = [
        ("Host", "rebind.evil.example:8080"),
        ("Origin", "http://rebind.evil.example:8080"),
        ("Authorization", admin.as_str()),
    ];
    assert_eq!(http(&addr, "POST", pause, &rebind).await?.0, 403);
    assert_eq!(http(&addr, "GET", "/api/queues", &rebind).await?.0, 403);
    let local = [
        ("Host", "localhost:8080"),
        ("Authorization", admin.as_str()),
    ];
    assert_eq!(http(&addr, "GET", "/api/queues", &local).await?.0, 200);
    Ok(())
}

/// The code of a failed call, `None` when it succeeded.
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    result.err().map(|status| status.code())
}

/// A GET over TLS to the HTTP port, trusting `ca` (and showing `client`'s certificate).
async fn https_get(
    addr: &str,
    path: &str,
    ca: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> anyhow::Result<(u16, String)> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify; what arrived is what counts.
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

#[tokio::test]
async fn tls_on_both_ports_and_mtls_identities_map_to_scopes() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    // A client certificate valid for `ops-bot` (a configured certificate identity with the
    // admin scope) and one for `stranger` (signed by the same CA, but no identity).
    pki.issue("ops-bot", &["ops-bot"])?;
    pki.issue("stranger", &["stranger"])?;
    let path = |f: &str| pki.path(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("server.pem"), path("server-key.pem"), path("ca.pem"));
    let tokens = format!("{};ops-bot:admin:*:", tokens());
    let tls_options = |identity: Option<&str>, token: Option<&str>| ConnectOptions {
        token: token.map(str::to_owned),
        ca_cert_pem: Some(pki.read("ca.pem")),
        client_identity_pem: identity.map(|name| {
            (
                pki.read(&format!("{name}.pem")),
                pki.read(&format!("{name}-key.pem")),
            )
        }),
        tls_domain: Some("localhost".to_owned()),
    };
    let h = Harness::builder()
        .env("TAREFA_TOKENS", &tokens)
        .scheduler_args(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--tls-client-auth",
            "optional",
        ])
        .https()
        .client_options(tls_options(None, Some(ADMIN)))
        .start()
        .await?;
    assert!(h.scheduler.endpoint.starts_with("https://"));

    // Submit and wait over TLS, with a token.
    let fib = h
        .client
        .submit(tarefa_client::builtin::Fib { n: 90 })
        .await?
        .wait()
        .await?;
    assert_eq!(fib, "2880067194370816120");

    // Plain text to a TLS port gets nowhere.
    let plain = h.scheduler.endpoint.replacen("https://", "http://", 1);
    let refused = match tarefa_client::Client::connect_with(plain, with_token(ADMIN)).await {
        Ok(client) => client.list_queues().await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a plain-text client was served on the TLS port");

    // The certificate identity `ops-bot` may act with no token at all; `stranger` is only
    // anonymous (nothing, since tokens are configured).
    let bot = tarefa_client::Client::connect_with(
        h.scheduler.endpoint.clone(),
        tls_options(Some("ops-bot"), None),
    )
    .await?;
    bot.pause("default").await?;
    bot.resume("default").await?;
    let stranger = tarefa_client::Client::connect_with(
        h.scheduler.endpoint.clone(),
        tls_options(Some("stranger"), None),
    )
    .await?;
    let code = stranger.list_queues().await.err().and_then(|e| e.code());
    assert_eq!(code, Some(Code::Unauthenticated));

    // The HTTP port speaks TLS too, with the same identities.
    let addr = h.scheduler.http_addr.clone();
    let ca_pem = pki.read("ca.pem");
    let (status, body) = eventually("the https port", Duration::from_secs(20), || {
        let addr = addr.clone();
        let ca_pem = ca_pem.clone();
        async move { https_get(&addr, "/healthz", &ca_pem, None).await.ok() }
    })
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _) = https_get(&addr, "/api/queues", &ca_pem, None).await?;
    assert_eq!(status, 401);
    let (bot_cert, bot_key) = (pki.read("ops-bot.pem"), pki.read("ops-bot-key.pem"));
    let (status, body) =
        https_get(&addr, "/api/session", &ca_pem, Some((&bot_cert, &bot_key))).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"ops-bot\""), "{body}");
    Ok(())
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_certificate_and_reloads_on_sighup()
-> anyhow::Result<()> {
    let pki = TestPki::new()?;
    pki.issue("ops-bot", &["ops-bot"])?;
    let path = |f: &str| pki.path(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("server.pem"), path("server-key.pem"), path("ca.pem"));
    let options = |identity: bool| ConnectOptions {
        token: None,
        ca_cert_pem: Some(pki.read("ca.pem")),
        client_identity_pem: identity
            .then(|| (pki.read("ops-bot.pem"), pki.read("ops-bot-key.pem"))),
        tls_domain: Some("localhost".to_owned()),
    };
    let h = Harness::builder()
        .env("TAREFA_TOKENS", "ops-bot:admin:*:")
        .scheduler_args(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ])
        .https()
        .client_options(options(true))
        .start()
        .await?;
    h.client.list_queues().await?;
    let anonymous =
        match tarefa_client::Client::connect_with(h.scheduler.endpoint.clone(), options(false))
            .await
        {
            Ok(client) => client.list_queues().await.err(),
            Err(error) => Some(error),
        };
    let error = anonymous.context("a client without a certificate was served")?;
    assert_ne!(error.code(), Some(Code::Ok), "{error}");

    // A new server certificate (same name, new key) is picked up on SIGHUP; connections
    // made afterwards see it, and the old client keeps working.
    let before = std::fs::read(pki.path("server.pem"))?;
    pki.issue("server", &["localhost", "127.0.0.1"])?;
    h.scheduler.process.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the reload to be logged", Duration::from_secs(20), || {
        let log = h.scheduler.process.log();
        async move { log.contains("tls certificate reloaded").then_some(()) }
    })
    .await;
    assert_ne!(before, std::fs::read(pki.path("server.pem"))?);
    let again =
        tarefa_client::Client::connect_with(h.scheduler.endpoint.clone(), options(true)).await?;
    again.list_queues().await?;
    h.client.list_queues().await?;
    Ok(())
}

#[tokio::test]
async fn rediss_to_a_redis_that_speaks_only_tls() -> anyhow::Result<()> {
    use tarefa_tests::{Process, binary, free_port, wait_for_listener};
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let path = |f: &str| pki.path(f).to_string_lossy().into_owned();
    let redis_port = free_port();
    let mut command = std::process::Command::new("redis-server");
    command
        .args(["--port", "0", "--tls-port", &redis_port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &path("server.pem")])
        .args(["--tls-key-file", &path("server-key.pem")])
        .args(["--tls-ca-cert-file", &path("ca.pem")])
        .args(["--tls-auth-clients", "no"])
        .arg("--dir")
        .arg(dir.path());
    let _redis = Process::start(
        "redis-server (tls)",
        &mut command,
        dir.path().join("redis.log"),
    )
    .context("redis-server is required: apt-get install redis-server (built with TLS)")?;
    wait_for_listener(redis_port, Duration::from_secs(10)).await?;

    let url = format!("rediss://localhost:{redis_port}");
    let (grpc, http_port) = (free_port(), free_port());
    let mut scheduler = std::process::Command::new(binary("tarefa-scheduler-test"));
    scheduler
        .args([
            "--redis-url",
            &url,
            "--listen",
            &format!("127.0.0.1:{grpc}"),
        ])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("TAREFA_REDIS_CA_CERT", pki.path("ca.pem"))
        .env("RUST_LOG", "info");
    let _scheduler = Process::start(
        "scheduler",
        &mut scheduler,
        dir.path().join("scheduler.log"),
    )?;
    let mut executor = std::process::Command::new(binary("tarefa-executor-test"));
    executor
        .args(["--redis-url", &url])
        .env("TAREFA_REDIS_CA_CERT", pki.path("ca.pem"))
        .env("RUST_LOG", "info");
    let _executor = Process::start("executor", &mut executor, dir.path().join("executor.log"))?;
    wait_for_listener(grpc, Duration::from_secs(20)).await?;

    let client = tarefa_client::Client::connect(format!("http://127.0.0.1:{grpc}")).await?;
    let fib = client
        .submit(tarefa_client::builtin::Fib { n: 90 })
        .await?
        .wait()
        .await?;
    assert_eq!(fib, "2880067194370816120");
    Ok(())
}

#[tokio::test]
async fn the_limits_an_open_port_needs() -> anyhow::Result<()> {
    let h = Harness::builder()
        .scheduler_args(&[
            "--max-request-bytes",
            "1048576",
            "--max-payload-bytes",
            "524288",
            "--max-watches",
            "2",
            "--max-connections",
            "3",
            "--header-read-timeout-ms",
            "300",
            "--max-queues",
            "4",
            "--max-submit-inflight-bytes",
            "65536",
        ])
        .start()
        .await?;
    let mut raw = h.client.raw();

    // Page tokens the server never issued: huge ones were INTERNAL, 2^64-1 looped.
    for token in ["9223372036854775808", "18446744073709551615", "-1", "x"] {
        let listed = raw
            .list_tasks(pb::ListTasksRequest {
                queue: "default".to_owned(),
                state: pb::TaskState::Dead as i32,
                page_token: token.to_owned(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(listed),
            Some(Code::InvalidArgument),
            "page token {token}"
        );
    }

    // A task id's queue part is a queue name: a 20 000-character one never reaches Redis.
    let long_id = format!("{}:01ARZ3NDEKTSV4RRFFQ69G5FAV", "q".repeat(20_000));
    let got = raw
        .get_task(pb::GetTaskRequest {
            task_id: long_id.clone(),
        })
        .await;
    assert_eq!(code(got), Some(Code::InvalidArgument));
    let got = raw
        .cancel_task(pb::CancelTaskRequest { task_id: long_id })
        .await;
    assert_eq!(code(got), Some(Code::InvalidArgument));

    // A request over --max-request-bytes is RESOURCE_EXHAUSTED (tonic's OUT_OF_RANGE before).
    let huge = raw
        .submit_task(pb::SubmitTaskRequest {
            task_type: "echo".to_owned(),
            payload: vec![b'x'; 2 * 1024 * 1024],
            ..Default::default()
        })
        .await;
    assert_eq!(code(huge), Some(Code::ResourceExhausted));

    // List pages read summaries (they were whole records, and a page of big tasks was
    // OUT_OF_RANGE for ever): three 500 KB tasks list as three small rows.
    for _ in 0..3 {
        h.client
            .submit_raw(pb::SubmitTaskRequest {
                queue: "big".to_owned(),
                task_type: "echo".to_owned(),
                payload: vec![b'7'; 500_000],
                delay_ms: 3_600_000,
                ..Default::default()
            })
            .await?;
    }
    let page = |page_size: u32| pb::ListTasksRequest {
        queue: "big".to_owned(),
        state: pb::TaskState::Scheduled as i32,
        page_size,
        ..Default::default()
    };
    // A page reads summaries: three tasks of 500 kB payloads list in a few hundred bytes.
    let listed = raw.list_tasks(page(3)).await?.into_inner();
    assert_eq!(listed.tasks.len(), 3);
    assert!(
        listed
            .tasks
            .iter()
            .all(|t| t.payload.is_empty() && t.task_type == "echo"),
        "{:?}",
        listed
            .tasks
            .iter()
            .map(|t| t.payload.len())
            .collect::<Vec<_>>()
    );
    // GetTask still has the whole task.
    let whole = h.client.get(&listed.tasks[0].task_id).await?;
    assert_eq!(whole.payload.len(), 500_000);

    // Watches in all are bounded: the third open one is refused, and a slot frees when a
    // watcher goes away.
    let sleeper = |ms: u64| pb::SubmitTaskRequest {
        task_type: "sleep".to_owned(),
        payload: format!("{{\"ms\": {ms}}}").into_bytes(),
        ..Default::default()
    };
    let id = h.client.submit_raw(sleeper(60_000)).await?.task_id;
    let first = h.client.watch(&id).await?;
    let second = h.client.watch(&id).await?;
    let third = h.client.watch(&id).await.err().and_then(|e| e.code());
    assert_eq!(third, Some(Code::ResourceExhausted));
    drop(first);
    eventually("a watch slot to free up", Duration::from_secs(20), || {
        let client = h.client.clone();
        let id = id.clone();
        async move { client.watch(&id).await.ok().map(drop) }
    })
    .await;
    drop(second);
    h.client.cancel(&id).await?;

    // Batches in flight are bounded by size: one bigger than the whole budget is refused
    // (smaller ones wait for room), and a batch that fits goes through.
    let sized = |bytes: usize| pb::SubmitTaskRequest {
        task_type: "echo".to_owned(),
        payload: vec![b'1'; bytes],
        ..Default::default()
    };
    let big = h
        .client
        .submit_batch(vec![sized(40_000), sized(40_000)])
        .await;
    assert_eq!(
        big.err().and_then(|e| e.code()),
        Some(Code::ResourceExhausted)
    );
    h.client
        .submit_batch(vec![sized(10_000), sized(10_000)])
        .await?;

    // Queues are bounded: `default`, `big` and two more, then a fifth is refused (existing
    // ones still take work).
    let to = |queue: &str| pb::SubmitTaskRequest {
        queue: queue.to_owned(),
        task_type: "echo".to_owned(),
        payload: b"{}".to_vec(),
        ..Default::default()
    };
    h.client.submit_raw(to("q1")).await?;
    h.client.submit_batch(vec![to("q2"), to("q1")]).await?;
    let fourth = h
        .client
        .submit_raw(to("q3"))
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(fourth, Some(Code::ResourceExhausted));
    let fourth = h.client.submit_batch(vec![to("q1"), to("q4")]).await;
    assert_eq!(
        fourth.err().and_then(|e| e.code()),
        Some(Code::ResourceExhausted)
    );
    h.client.submit_raw(to("q2")).await?;

    // The HTTP port: a request whose headers never finish is dropped after the
    // header-read timeout (it stayed open 45 s and more before).
    let addr = h.scheduler.http_addr.clone();
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await?;
    let mut buffer = [0u8; 512];
    let closed = tokio::time::timeout(
        tarefa_tests::patience(Duration::from_secs(10)),
        slow.read(&mut buffer),
    )
    .await
    .context("a half-sent request was kept open past the header-read timeout")?;
    assert!(matches!(closed, Ok(0) | Err(_)) || buffer.starts_with(b"HTTP/1.1 408"));

    // Connections are bounded: with 3 idle ones open, a 4th is closed at once.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await?);
    }
    let mut fourth = tokio::net::TcpStream::connect(&addr).await?;
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let refused = tokio::time::timeout(
        tarefa_tests::patience(Duration::from_secs(10)),
        fourth.read(&mut buffer),
    )
    .await
    .context("the connection over the limit was not closed")?;
    assert!(matches!(refused, Ok(0) | Err(_)), "{refused:?}");
    drop(idle);
    let metrics = eventually(
        "a connection slot to free up",
        Duration::from_secs(20),
        || {
            let addr = addr.clone();
            async move {
                let (status, _, body) = http(&addr, "GET", "/metrics", &[]).await.ok()?;
                (status == 200).then_some(body)
            }
        },
    )
    .await;
    assert!(
        metrics.contains("tarefa_scheduler_connections_refused_total ")
            && !metrics.contains("tarefa_scheduler_connections_refused_total 0\n"),
        "the refused connection is not counted:\n{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn secrets_stay_out_of_help_and_task_text_stays_out_of_the_terminal() -> anyhow::Result<()> {
    // clap shows env values in --help unless told not to.
    let output = std::process::Command::new(tarefa_tests::binary("tarefa-scheduler-test"))
        .arg("--help")
        .env(
            "TAREFA_REDIS_URL",
            "redis://:sekret-password@redis.example:6379",
        )
        .env("TAREFA_TOKENS", "ops:admin:*:sekret-token-0123456789")
        .env("TAREFA_DASHBOARD_TOKEN", "sekret-dashboard-token")
        .output()?;
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--tokens-file"), "{help}");
    assert!(!help.contains("sekret"), "a secret in --help:\n{help}");

    // A task's error with terminal escapes and newlines is printed as text by the CLI.
    let h = Harness::builder().start().await?;
    let hostile = "\u{1b}]0;pwned\u{7}\nFORGED LOG LINE \u{1b}[31mred";
    let task = h
        .client
        .submit_with(
            tarefa_client::builtin::Fail {
                message: hostile.to_owned(),
                permanent: true,
            },
            &tarefa_client::SubmitOptions::default(),
        )
        .await?;
    h.wait_final(task.id(), Duration::from_secs(30)).await;
    let output = tokio::process::Command::new(tarefa_tests::binary("tarefa-test"))
        .args(["--scheduler", &h.scheduler.endpoint, "get", task.id()])
        .env_remove("TAREFA_TOKEN")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("FORGED")), "{text}");

    // The executor logged the failure, escaped: no forged line, no escape sequence.
    let log = h.executors[0].log();
    assert!(
        log.contains("FORGED LOG LINE"),
        "the failure was not logged:\n{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    Ok(())
}

/// A remote handler that answers every task with its payload.
#[derive(Debug, Default)]
struct EchoHandler;

#[tonic::async_trait]
impl pb::task_handler_server::TaskHandler for EchoHandler {
    async fn execute(
        &self,
        request: tonic::Request<pb::ExecuteRequest>,
    ) -> Result<tonic::Response<pb::ExecuteResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ExecuteResponse {
            outcome: pb::ExecuteOutcome::Success as i32,
            result: request.into_inner().payload,
            ..Default::default()
        }))
    }
}

#[tokio::test]
async fn the_executor_reaches_a_grpcs_handler_over_tls() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let identity =
        tonic::transport::Identity::from_pem(pki.read("server.pem"), pki.read("server-key.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?
            .add_service(pb::task_handler_server::TaskHandlerServer::new(EchoHandler))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let route = format!("tls_echo=grpcs://localhost:{port}");
    let ca = pki.path("ca.pem").to_string_lossy().into_owned();
    let h = Harness::builder()
        .executor_args(&["--handler", &route])
        .env("TAREFA_HANDLER_CA_CERT", &ca)
        .start()
        .await?;
    let submitted = h
        .client
        .submit_raw(
            tarefa_client::SubmitOptions::default().request("tls_echo", b"\"over tls\"".to_vec()),
        )
        .await?;
    let task = h
        .wait_final(&submitted.task_id, Duration::from_secs(60))
        .await;
    assert_eq!(
        task.state(),
        pb::TaskState::Succeeded,
        "{}",
        task.last_error
    );
    assert_eq!(task.result, b"\"over tls\"");
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// A remote HTTP handler over TLS, for the executor to call: serves `pki`'s certificate
/// `<cert>.pem` and answers every POST with its own body (an echo), one request per
/// connection. It stops when `stop` is sent to or dropped.
async fn https_echo_handler(
    pki: &TestPki,
    cert: &str,
) -> anyhow::Result<(
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(&pki.read(&format!("{cert}.pem")))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&pki.read(&format!("{cert}-key.pem")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
                _ = &mut stopped => return,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake (a client that does not trust us) just ends here.
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(body) = read_http_request(&mut stream).await else {
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((port, stop, server))
}

/// Reads one HTTP/1.1 request with a `content-length` body, and returns the body.
async fn read_http_request(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the request ended before its headers did");
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    let mut body = raw.split_off(end);
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the request ended before its body did");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(body)
}

#[tokio::test]
async fn the_executor_reaches_an_https_handler_over_tls() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    // A second handler whose certificate (from the same CA) names another host: the executor
    // must refuse it, so the name is checked and not only the chain.
    pki.issue("elsewhere", &["elsewhere.example"])?;
    let (port, stop, server) = https_echo_handler(&pki, "server").await?;
    let (wrong_port, stop_wrong, wrong_server) = https_echo_handler(&pki, "elsewhere").await?;
    let routes = [
        format!("tls_echo=https://localhost:{port}/tasks/echo"),
        format!("tls_echo_ip=https://127.0.0.1:{port}/tasks/echo"),
        format!("wrong_name=https://localhost:{wrong_port}/tasks/echo"),
        format!("plain_to_tls=http://localhost:{port}/tasks/echo"),
    ];
    let mut args = Vec::new();
    for route in &routes {
        args.extend(["--handler", route.as_str()]);
    }
    let ca = pki.path("ca.pem").to_string_lossy().into_owned();
    let h = Harness::builder()
        .executor_args(&args)
        .env("TAREFA_HANDLER_CA_CERT", &ca)
        .start()
        .await?;
    let submit = |task_type: &'static str, payload: &'static [u8]| {
        let client = h.client.clone();
        async move {
            let options = tarefa_client::SubmitOptions {
                max_attempts: Some(1),
                ..Default::default()
            };
            client
                .submit_raw(options.request(task_type, payload.to_vec()))
                .await
        }
    };
    for (task_type, payload) in [
        ("tls_echo", &b"\"over tls\""[..]),
        ("tls_echo_ip", &b"{\"to\": \"an IP address\"}"[..]),
    ] {
        let submitted = submit(task_type, payload).await?;
        let task = h
            .wait_final(&submitted.task_id, Duration::from_secs(60))
            .await;
        assert_eq!(
            task.state(),
            pb::TaskState::Succeeded,
            "{task_type}: {}",
            task.last_error
        );
        assert_eq!(task.result, payload, "{task_type}");
    }
    // A certificate for another name, and plain text to a TLS port, are failed attempts.
    let wrong = submit("wrong_name", b"{}").await?;
    let task = h.wait_final(&wrong.task_id, Duration::from_secs(60)).await;
    assert_eq!(task.state(), pb::TaskState::Dead);
    assert!(
        task.last_error.contains("certificate"),
        "{}",
        task.last_error
    );
    let plain = submit("plain_to_tls", b"{}").await?;
    let task = h.wait_final(&plain.task_id, Duration::from_secs(60)).await;
    assert_eq!(task.state(), pb::TaskState::Dead, "{}", task.last_error);
    let _ = stop.send(());
    let _ = stop_wrong.send(());
    server.await?;
    wrong_server.await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_sends_the_payload_once() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let h = Harness::builder().start().await?;
    let submitted = h
        .client
        .submit_raw(pb::SubmitTaskRequest {
            task_type: "sleep".to_owned(),
            payload: br#"{"ms": 600, "padding": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.to_vec(),
            ..Default::default()
        })
        .await?;
    let mut stream = h.client.watch(&submitted.task_id).await?;
    let mut messages = Vec::new();
    while let Some(task) = stream.next().await {
        messages.push(task?);
    }
    assert!(messages.len() >= 2, "{messages:?}");
    assert!(!messages[0].payload.is_empty());
    assert!(
        messages[1..].iter().all(|t| t.payload.is_empty()),
        "the payload was sent again"
    );
    let last = messages.last().context("no message")?;
    assert_eq!(last.state(), pb::TaskState::Succeeded);
    assert!(!last.result.is_empty());
    // The result goes with the final message only: once per watch.
    assert!(
        messages[..messages.len() - 1]
            .iter()
            .all(|t| t.result.is_empty()),
        "the result was sent before the final message"
    );
    Ok(())
}

#[tokio::test]
async fn a_watch_over_the_message_limit_says_why() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    // Answers of at most 64 KiB; a task's payload may be 48 KiB, and an executor stores
    // results of up to 2 MiB (its default), so a task can outgrow what the scheduler sends.
    let mut h = Harness::builder()
        .executors(0)
        .scheduler_args(&[
            "--max-request-bytes",
            "65536",
            "--max-payload-bytes",
            "49152",
        ])
        .start()
        .await?;
    // An echo of 40 KB: its payload and result together (80 KB) are over the limit.
    let echo = h
        .client
        .submit_raw(pb::SubmitTaskRequest {
            task_type: "echo".to_owned(),
            payload: format!("\"{}\"", "e".repeat(40_000)).into_bytes(),
            ..Default::default()
        })
        .await?;
    // F(400 000) has 83 595 digits: a result over the limit on its own, from a tiny payload.
    let fib = h
        .client
        .submit_raw(pb::SubmitTaskRequest {
            task_type: "fib".to_owned(),
            payload: br#"{"n": 400000}"#.to_vec(),
            ..Default::default()
        })
        .await?;
    // Watched while it waits (no executor yet): the first message fits.
    let mut fib_watch = h.client.watch(&fib.task_id).await?;
    let first = fib_watch.next().await.context("no first message")??;
    assert_eq!(first.state(), pb::TaskState::Queued);

    h.add_executor(&[])?;
    // The stream then says why it cannot send the final state, and ends (it failed in the
    // transport before, with OUT_OF_RANGE or a broken stream).
    let mut refusal = None;
    while let Some(item) = fib_watch.next().await {
        match item {
            Ok(task) => assert!(
                !task.state.eq(&(pb::TaskState::Succeeded as i32)),
                "an over-limit final message was sent"
            ),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let refusal = refusal.context("the watch ended without saying why")?;
    assert_eq!(refusal.code(), Some(Code::ResourceExhausted), "{refusal}");
    let text = refusal.to_string();
    assert!(
        text.contains("--max-request-bytes") && text.contains("SUCCEEDED"),
        "{text}"
    );
    assert!(fib_watch.next().await.is_none(), "the stream went on");
    // The typed wait hears the same, instead of waiting for ever.
    let waited = h.client.wait(&fib.task_id).await;
    assert_eq!(
        waited.err().and_then(|e| e.code()),
        Some(Code::ResourceExhausted)
    );

    // A finished task too big to send whole: GetTask and WatchTask both refuse it up front.
    // (GetTask answers while the task is small, and refuses it once its result is stored.)
    let refused = eventually(
        "the echo's result to be stored",
        Duration::from_secs(60),
        || {
            let client = h.client.clone();
            let task_id = echo.task_id.clone();
            async move { client.get(&task_id).await.err() }
        },
    )
    .await;
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(
        refused.to_string().contains("--max-request-bytes"),
        "{refused}"
    );
    let watched = h.client.watch(&echo.task_id).await.err();
    let watched = watched.context("an over-limit watch was opened")?;
    assert_eq!(watched.code(), Some(Code::ResourceExhausted));
    assert!(
        watched
            .to_string()
            .contains("SUCCEEDED, with a 40002-byte payload"),
        "{watched}"
    );

    // The scheduler goes on serving watches that fit.
    let small = h
        .client
        .submit(tarefa_client::builtin::Fib { n: 90 })
        .await?
        .wait()
        .await?;
    assert_eq!(small, "2880067194370816120");
    Ok(())
}

/// Sends bytes as they are: for requests no generated client would make.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawCoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawCoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn malformed_requests_get_their_documented_codes() -> anyhow::Result<()> {
    let h = Harness::builder().executors(0).start().await?;
    let channel = tonic::transport::Endpoint::from_shared(h.scheduler.endpoint.clone())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut call = async |path: &'static str, body: Vec<u8>| {
        grpc.ready().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let result = grpc
            .unary(
                tonic::Request::new(body),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await;
        anyhow::Ok(result.err().map(|s| s.code()))
    };
    // Not protobuf at all; a string field (task_id, 1) holding invalid UTF-8.
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
    let bad_utf8 = vec![0x0a, 0x02, 0xc3, 0x28];
    for (path, body) in [
        ("/tarefa.v1.Scheduler/GetTask", garbage.clone()),
        ("/tarefa.v1.Scheduler/SubmitTask", garbage),
        ("/tarefa.v1.Scheduler/GetTask", bad_utf8),
    ] {
        assert_eq!(
            call(path, body).await?,
            Some(Code::InvalidArgument),
            "{path}"
        );
    }
    // An unknown enum value.
    let listed = h
        .client
        .raw()
        .list_tasks(pb::ListTasksRequest {
            queue: "default".to_owned(),
            state: 99,
            ..Default::default()
        })
        .await;
    assert_eq!(code(listed), Some(Code::InvalidArgument));
    // A deadline already past: the call ends with DEADLINE_EXCEEDED, never INTERNAL.
    let mut request = tonic::Request::new(pb::ListQueuesRequest {});
    request.set_timeout(Duration::from_nanos(1));
    let late = h.client.raw().list_queues(request).await;
    assert!(
        matches!(
            code(late),
            Some(Code::DeadlineExceeded | Code::Cancelled) | None
        ),
        "a past deadline"
    );
    // The scheduler is still fine.
    h.client.list_queues().await?;
    Ok(())
}

/// The Python client over TLS with a token (issue 13's options against issue 12's scheduler):
/// it verifies the scheduler's certificate, sends its token, and a wrong token is refused as
/// `tarefa.Unauthenticated`.
#[tokio::test]
async fn the_python_client_speaks_tls_with_a_token() -> anyhow::Result<()> {
    let python = crate::polyglot::venv_python().await;
    let pki = TestPki::new()?;
    let path = |f: &str| pki.path(f).to_string_lossy().into_owned();
    let h = Harness::builder()
        .env("TAREFA_TOKENS", &tokens())
        .scheduler_args(&[
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server-key.pem"),
        ])
        .https()
        .client_options(ConnectOptions {
            token: Some(ADMIN.to_owned()),
            ca_cert_pem: Some(pki.read("ca.pem")),
            client_identity_pem: None,
            tls_domain: Some("localhost".to_owned()),
        })
        .start()
        .await?;
    let address = h
        .scheduler
        .endpoint
        .replacen("https://127.0.0.1", "localhost", 1);
    let script = r#"
import sys, tarefa
address, ca, token = sys.argv[1:4]
client = tarefa.Client(address, token=token, root_certificates=ca)
print("RESULT", client.submit("echo", "over tls").wait(timeout=30))
try:
    tarefa.Client(address, token="wrong-secret-0123456789", root_certificates=ca).submit("echo", 1)
    print("WRONG-TOKEN accepted")
except tarefa.Unauthenticated:
    print("WRONG-TOKEN refused")
"#;
    let output = crate::polyglot::run_python(
        &python,
        &[
            "-c",
            script,
            &address,
            &path("ca.pem"),
            SUBMITTER_AND_READER,
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(output.contains("RESULT over tls"), "{output}");
    assert!(output.contains("WRONG-TOKEN refused"), "{output}");
    Ok(())
}
