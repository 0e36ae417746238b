//! What the shutdown tests (`shutdown_postgres`, `shutdown_kafka`) share: a child process running
//! one role of the test binary, stopped by a signal and checked for a graceful exit, and a poll
//! with a bound.
#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a child may take to exit after SIGTERM or SIGINT.
pub const EXIT_BOUND: Duration = Duration::from_secs(10);

/// A child process running `role` (killed if the test fails before it exits).
pub struct ChildProcess {
    child: Child,
    role: &'static str,
}

impl ChildProcess {
    /// Runs `test` of this test binary alone with `env`, and waits (at most 60 s) for the line
    /// holding `started`.
    pub fn spawn(test: &str, role: &'static str, env: &[(&str, String)], started: &str) -> Self {
        let mut command = crate::common::crash::child_command(test);
        for (name, value) in env {
            command.env(name, value);
        }
        let started = started.to_owned();
        let (child, line) = crate::common::spawn_until_started(
            &mut command,
            role,
            Duration::from_secs(60),
            // libtest's `test NAME ... ` comes first on the line.
            move |line| line.contains(&started),
        );
        println!("{line}");
        Self { child, role }
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait for the child").is_none()
    }

    /// Sends `signal` (`TERM`, `INT`).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {}", self.role);
    }

    /// Waits for the exit, at most `bound` after `sent`: its status and how long it took.
    pub async fn exited_since(&mut self, sent: Instant, bound: Duration) -> (ExitStatus, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                return (status, sent.elapsed());
            }
            assert!(
                sent.elapsed() < bound,
                "the {} did not exit within {bound:?} of the signal",
                self.role
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` and checks a graceful exit: status 0 within [`EXIT_BOUND`].
    pub async fn stop(&mut self, signal: &str) -> Duration {
        let sent = Instant::now();
        self.signal(signal);
        let (status, took) = self.exited_since(sent, EXIT_BOUND).await;
        assert_eq!(
            status.code(),
            Some(0),
            "the {} exits 0 after SIG{signal} ({status})",
            self.role
        );
        println!("the {} stopped on SIG{signal} in {took:?}", self.role);
        took
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 50 ms until it holds or `bound` passed; returns how long it took. `why`
/// says what a miss usually means.
pub async fn within<F, Fut>(bound: Duration, what: &str, why: &str, mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{what} did not happen within {bound:?} ({why})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
