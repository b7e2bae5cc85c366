//! Time is Redis's: a Redis that stops serving for longer than the lease, or a scheduler whose
//! clock disagrees with Redis's, must neither restart live work nor misplace delays.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tarefa_client::SubmitOptions;
use tarefa_client::builtin::Echo;
use tarefa_proto::TaskState;
use tarefa_tests::Harness;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn redis_pid(h: &Harness) -> Pid {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut h.redis.connection())
        .expect("INFO server");
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("redis's pid");
    Pid::from_raw(pid)
}

/// Redis frozen (SIGSTOP) for twice the lease while executors run tasks: when it serves again,
/// every entry looks idle past its lease, exactly as after a forward jump of its clock. The
/// gap starts a new serving period, the live holders renew, and nothing is taken back.
#[tokio::test]
async fn a_frozen_redis_takes_nothing_from_live_executors() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(2)
        .executor_args(&["--lease-ms", "2000", "--redis-timeout-ms", "500"])
        .start()
        .await?;
    let ids = h.running_sleeps(4, 3000).await?;
    let pid = redis_pid(&h);
    kill(pid, Signal::SIGSTOP)?;
    // The freeze itself: twice the lease.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    kill(pid, Signal::SIGCONT)?;
    for id in &ids {
        let task = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            task.state(),
            TaskState::Succeeded,
            "{id}: {:?}",
            task.errors
        );
        assert_eq!(task.attempt, 1, "{id} was taken back: {:?}", task.errors);
    }
    Ok(())
}

/// A delay is measured on Redis's clock, not the scheduler's: with the scheduler's clock an
/// hour ahead (libfaketime; Debian: `apt-get install faketime`), a task delayed by one second
/// still runs about a second later (it used to be due an hour later).
#[tokio::test]
async fn a_delay_runs_on_redis_time_whatever_the_schedulers_clock() -> anyhow::Result<()> {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install libfaketime (Debian/Ubuntu: apt-get install faketime)"
    );
    let h = Harness::builder()
        .executors(1)
        .scheduler_env("LD_PRELOAD", LIBFAKETIME)
        .scheduler_env("FAKETIME", "+3600")
        .scheduler_env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .start()
        .await?;
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
