//! A hostile client against a real scheduler process: more watches than `--max-watches`,
//! concurrent `SubmitTasks` larger than `--max-submit-inflight-bytes`, and connections that
//! never finish their handshake, all at once. The scheduler's memory stays within a bound
//! computed from its flags (see SECURITY.md, "Memory under hostile load"), every hostile call
//! gets its documented status, and the scheduler serves normally once the client goes away.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use tarefa_proto as pb;
use tarefa_tests::{Harness, eventually};
use tokio::io::AsyncWriteExt as _;
use tonic::Code;

const MIB: u64 = 1024 * 1024;

/// `VmRSS` (now) and `VmHWM` (the peak) of a process, in bytes.
fn memory(pid: i32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

async fn channel(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect()
            .await?,
    )
}

#[tokio::test]
async fn the_schedulers_memory_stays_bounded_under_hostile_load() -> anyhow::Result<()> {
    const WATCHES: usize = 10;
    const HOSTILE_WATCHES: usize = 60;
    // Three batches per connection: a stream waiting for room holds its connection's HTTP/2
    // window, so the next one on that connection is only sent once the first is answered.
    const BATCH_CONNECTIONS: usize = 16;
    const BATCHES: usize = 3 * BATCH_CONNECTIONS;
    const CONNECTIONS: usize = 40;
    // A batch of 3.5 MiB: under --max-request-bytes (4 MiB), over
    // --max-submit-inflight-bytes (2 MiB).
    const BATCH_TASKS: usize = 4;
    const TASK_BYTES: usize = 900 * 1024;
    let mut h = Harness::builder()
        .executors(0)
        .scheduler_args(&[
            "--max-request-bytes",
            "4194304",
            "--max-submit-inflight-bytes",
            "2097152",
            "--max-watches",
            &WATCHES.to_string(),
            "--max-connections",
            &CONNECTIONS.to_string(),
            "--max-streams-per-connection",
            "16",
            "--header-read-timeout-ms",
            "500",
        ])
        .start()
        .await?;
    let pid = h
        .scheduler
        .process
        .pid()
        .context("the scheduler has no pid")?
        .as_raw();
    // A task that waits for ever (no executor yet): something to watch.
    let waiting = h
        .client
        .submit_raw(pb::SubmitTaskRequest {
            task_type: "echo".to_owned(),
            payload: b"\"watched\"".to_vec(),
            ..Default::default()
        })
        .await?
        .task_id;
    let (baseline, _) = memory(pid)?;

    // The hostile client's own connections: 4 for watches, the rest for batches.
    let mut channels = Vec::new();
    for _ in 0..4 + BATCH_CONNECTIONS {
        channels.push(channel(&h.scheduler.endpoint).await?);
    }

    // Connections that never say anything, on both ports, beyond --max-connections: those over
    // the limit are closed at once, the others wait for a handshake that never comes.
    let grpc_addr = h
        .scheduler
        .endpoint
        .trim_start_matches("http://")
        .to_owned();
    let mut silent = Vec::new();
    for i in 0..CONNECTIONS + 10 {
        for addr in [&grpc_addr, &h.scheduler.http_addr] {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                continue;
            };
            // Every other one sends half a greeting (HTTP/2's preface, an HTTP/1 request line).
            if i % 2 == 1 {
                let half: &[u8] = if addr == &grpc_addr {
                    b"PRI * HTTP/2.0\r\n"
                } else {
                    b"GET /healthz HTTP/1.1\r\n"
                };
                let _ = stream.write_all(half).await;
            }
            silent.push(stream);
        }
    }

    // Watches beyond --max-watches, and batches beyond --max-submit-inflight-bytes, at once.
    let watches = (0..HOSTILE_WATCHES).map(|i| {
        let mut client = pb::scheduler_client::SchedulerClient::new(channels[i % 4].clone());
        let task_id = waiting.clone();
        async move {
            client
                .watch_task(pb::WatchTaskRequest { task_id })
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let payload = format!("\"{}\"", "x".repeat(TASK_BYTES - 2)).into_bytes();
    let batches = (0..BATCHES).map(|i| {
        let mut client =
            pb::scheduler_client::SchedulerClient::new(channels[4 + i % BATCH_CONNECTIONS].clone())
                .max_encoding_message_size(usize::MAX);
        let tasks = (0..BATCH_TASKS)
            .map(|_| pb::SubmitTaskRequest {
                task_type: "echo".to_owned(),
                payload: payload.clone(),
                ..Default::default()
            })
            .collect();
        async move {
            client
                .submit_tasks(pb::SubmitTasksRequest { tasks })
                .await
                .err()
                .map(|status| status.code())
        }
    });
    let (watched, submitted) = tokio::join!(join_all(watches), join_all(batches));

    // Every hostile call got its documented answer: WATCHES watches open, the rest refused;
    // every oversized batch refused, none enqueued.
    let mut open = Vec::new();
    let mut refused = 0;
    for watch in watched {
        match watch {
            Ok(stream) => open.push(stream),
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => anyhow::bail!("a watch ended with {status:?}"),
        }
    }
    assert_eq!((open.len(), refused), (WATCHES, HOSTILE_WATCHES - WATCHES));
    assert!(
        submitted
            .iter()
            .all(|code| *code == Some(Code::ResourceExhausted)),
        "{submitted:?}"
    );

    // The peak so far (VmHWM covers every moment, not only the ones sampled) stays under the
    // bound SECURITY.md gives for these flags: the request budget (4 MiB, the larger of
    // --max-submit-inflight-bytes and --max-request-bytes) about three times over (bytes
    // received, decoded, validated), one HTTP/2 connection window (1 MiB) per connection that
    // sends (the hostile client's and the harness's), and slack for the allocator (freed
    // memory stays in its per-thread arenas). Without the budget the batches (168 MiB) were
    // held at once, some of them twice.
    let (now, peak) = memory(pid)?;
    let windows = (channels.len() + 1) as u64 * MIB;
    let bound = baseline + 3 * 4 * MIB + windows + 40 * MIB;
    println!(
        "scheduler memory: baseline {} MiB, peak {} MiB, now {} MiB, bound {} MiB",
        baseline / MIB,
        peak / MIB,
        now / MIB,
        bound / MIB
    );
    assert!(
        peak <= bound,
        "the scheduler's peak RSS {} MiB is over the bound {} MiB",
        peak / MIB,
        bound / MIB
    );

    // The hostile client goes away; the scheduler serves as before.
    drop(open);
    drop(silent);
    drop(channels);
    h.add_executor(&[])?;
    let fresh = eventually("a new client to be served", Duration::from_secs(30), || {
        let endpoint = h.scheduler.endpoint.clone();
        async move {
            let client = tarefa_client::Client::connect(endpoint).await.ok()?;
            client.list_queues().await.ok().map(|_| client)
        }
    })
    .await;
    let watched = fresh.wait(&waiting).await?;
    assert_eq!(watched.result, b"\"watched\"");
    let fib = fresh
        .submit(tarefa_client::builtin::Fib { n: 90 })
        .await?
        .wait()
        .await?;
    assert_eq!(fib, "2880067194370816120");
    // A batch that fits the budget goes through.
    fresh
        .submit_batch(vec![
            pb::SubmitTaskRequest {
                task_type: "echo".to_owned(),
                payload: payload.clone(),
                ..Default::default()
            };
            2
        ])
        .await?;
    let (after, _) = memory(pid)?;
    assert!(after <= bound, "{} MiB after the attack", after / MIB);
    Ok(())
}
