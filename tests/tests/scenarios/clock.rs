//! Time is Redis's: its clock jumping forward or back, or a scheduler whose clock disagrees
//! with it, must not restart live work, strand dead executors' tasks, or misplace delays.
//! Redis runs under libfaketime (Debian: `apt-get install faketime`), its clock moved by
//! rewriting the offset file while it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tarefa_client::SubmitOptions;
use tarefa_client::builtin::{Echo, Sleep};
use tarefa_proto::TaskState;
use tarefa_tests::{Harness, HarnessBuilder, eventually};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A Redis clock that the test can move: the builder with libfaketime preloaded into
/// redis-server, reading its offset from a file (re-read on every call).
fn movable_clock(builder: HarnessBuilder, offset: &str) -> (HarnessBuilder, tempfile::TempDir) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install libfaketime (Debian/Ubuntu: apt-get install faketime)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = offset_file(dir.path());
    std::fs::write(&file, offset).expect("write the clock offset");
    let builder = builder
        .redis_env("LD_PRELOAD", LIBFAKETIME)
        .redis_env("FAKETIME_TIMESTAMP_FILE", &file.display().to_string())
        .redis_env("FAKETIME_NO_CACHE", "1")
        .redis_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    (builder, dir)
}

fn offset_file(dir: &Path) -> PathBuf {
    dir.join("faketime.rc")
}

/// Redis's clock (ms) as it answers `TIME`.
fn redis_now_ms(h: &Harness) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME")
        .query(&mut h.redis.connection())
        .expect("TIME");
    s * 1000 + us / 1000
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Moves Redis's clock to `offset` (libfaketime syntax, e.g. `+120`, `-3600`) and waits until
/// Redis answers with it.
async fn move_clock(h: &Harness, dir: &Path, offset: &str, expect_ahead: bool) {
    std::fs::write(offset_file(dir), offset).expect("write the clock offset");
    eventually("redis's clock to move", Duration::from_secs(10), || {
        let now = redis_now_ms(h);
        let wall = wall_ms();
        let moved = if expect_ahead {
            now > wall + 30_000
        } else {
            now + 30_000 < wall
        };
        async move { moved.then_some(()) }
    })
    .await;
}

/// Forward: Redis's clock jumps two minutes ahead while executors run tasks under 3 s leases.
/// Before, every entry suddenly looked idle for two minutes and was taken back; now the jump
/// starts a new serving period and the live holders renew.
#[tokio::test]
async fn a_forward_clock_jump_takes_nothing_from_live_executors() -> anyhow::Result<()> {
    let (builder, dir) = movable_clock(
        Harness::builder()
            .executors(2)
            .executor_args(&["--lease-ms", "3000"]),
        "+0",
    );
    let h = builder.start().await?;
    let ids: Vec<String> = h
        .client
        .submit_many((0..4).map(|_| Sleep { ms: 3000 }), &SubmitOptions::default())
        .await?
        .into_iter()
        .map(|t| t.id().to_owned())
        .collect();
    for id in &ids {
        eventually("the task to run", Duration::from_secs(10), || async {
            let t = h.client.get(id).await.ok()?;
            (t.state() == TaskState::Running).then_some(())
        })
        .await;
    }
    move_clock(&h, dir.path(), "+120", true).await;
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(task.state(), TaskState::Succeeded, "{id}: {:?}", task.errors);
        assert_eq!(task.attempt, 1, "{id} was taken back: {:?}", task.errors);
    }
    Ok(())
}

/// Backward: Redis's clock jumps an hour back right after an executor died holding a task.
/// Before, the dead executor's lease looked fresh for an hour; now every lease restarts at the
/// jump and the task is taken back within a lease or so.
#[tokio::test]
async fn a_backward_clock_jump_does_not_strand_a_dead_executors_task() -> anyhow::Result<()> {
    let (builder, dir) = movable_clock(
        Harness::builder()
            .executors(1)
            .executor_args(&["--lease-ms", "1000"]),
        "+0",
    );
    let mut h = builder.start().await?;
    let handle = h.client.submit(Sleep { ms: 30_000 }).await?;
    eventually("the task to run", Duration::from_secs(10), || async {
        let t = h.client.get(handle.id()).await.ok()?;
        (t.state() == TaskState::Running).then_some(())
    })
    .await;
    h.executors[0].kill();
    move_clock(&h, dir.path(), "-3600", false).await;
    h.add_executor(&[])?;
    let task = eventually(
        "the dead executor's task to be taken back",
        Duration::from_secs(20),
        || async {
            let t = h.client.get(handle.id()).await.ok()?;
            (t.attempt >= 2).then_some(t)
        },
    )
    .await;
    assert!(task.errors[0].message.contains("lease expired"), "{:?}", task.errors);
    Ok(())
}

/// A delay is measured on Redis's clock, not the scheduler's: with Redis an hour behind the
/// scheduler, a task delayed by one second still runs about a second later.
#[tokio::test]
async fn a_delay_runs_on_redis_time_whatever_the_schedulers_clock() -> anyhow::Result<()> {
    let (builder, _dir) = movable_clock(Harness::builder().executors(1), "-3600");
    let h = builder.start().await?;
    assert!(redis_now_ms(&h) + 3_000_000 < wall_ms(), "redis's clock is not behind");
    let options = SubmitOptions {
        delay: Some(Duration::from_millis(1000)),
        ..SubmitOptions::default()
    };
    let handle = h
        .client
        .submit_with(Echo(serde_json::json!("later")), &options)
        .await?;
    let scheduled = h.client.get(handle.id()).await?;
    assert_eq!(scheduled.state(), TaskState::Scheduled);
    let task = h.wait_final(handle.id(), Duration::from_secs(15)).await;
    assert_eq!(task.state(), TaskState::Succeeded);
    Ok(())
}
