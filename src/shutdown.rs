//! Graceful shutdown on SIGTERM and SIGINT (feature `signal`, also enabled by `cli` and
//! `kafka`), the same way in applications and in eventfold's binaries.
//!
//! Every long-running piece of eventfold takes a shutdown future and stops gracefully when it
//! completes: [`Relay::run`](crate::outbox::Relay::run),
//! [`Consumer::run`](crate::outbox::Consumer::run), the saga
//! [`Scheduler::run`](crate::saga::runtime::Scheduler::run), the projections'
//! [`Runner::run`](crate::projections::Runner::run) and the choreography's
//! [`LocalReactor::run`](crate::saga::choreography::LocalReactor::run). This module gives them
//! that future from the process's signals:
//!
//! - [`signal`]: completes on the first SIGTERM or SIGINT (on platforms without Unix signals,
//!   Ctrl-C);
//! - [`run_until_signal`]: runs a piece (or several, joined) with a [`Stop`] future that
//!   completes on the first signal, then gives it `grace` to return. When the grace elapses, or
//!   a second signal comes, it returns an error at once ([`ShutdownError::GraceElapsed`],
//!   [`ShutdownError::SecondSignal`]); a binary then exits with status 1 and leaves the piece's
//!   leases to expire.
//!
//! ```no_run
//! use std::process::ExitCode;
//! use std::time::Duration;
//! use eventfold::eventstore::{memory::MemoryStore, OutboxRouting};
//! use eventfold::outbox::{InProcessBroker, Relay};
//! use eventfold::shutdown::run_until_signal;
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     let store = MemoryStore::new().with_outbox(OutboxRouting::new());
//!     let relay = Relay::new(store, InProcessBroker::new());
//!     // First SIGTERM or SIGINT: the relay stops claiming, settles its batches in flight and
//!     // releases its leases; at most 10 s, and a second signal ends the wait at once.
//!     match run_until_signal(Duration::from_secs(10), |stop| relay.run(stop)).await {
//!         Ok(stopped) => match stopped.output {
//!             Ok(()) => ExitCode::SUCCESS,
//!             Err(e) => {
//!                 eprintln!("the relay failed: {e}");
//!                 ExitCode::FAILURE
//!             }
//!         },
//!         Err(e) => {
//!             // The grace elapsed or a second signal came.
//!             eprintln!("{e}");
//!             ExitCode::FAILURE
//!         }
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM: what orchestrators (systemd, Kubernetes, `docker stop`) send.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
}

impl Signal {
    /// The signal's name: `SIGTERM`, `SIGINT`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a graceful shutdown did not end well.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The signal handlers could not be installed.
    #[error("listening for {signal}: {source}")]
    Install {
        /// The signal (`SIGTERM`, `SIGINT`).
        signal: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The piece did not return within the grace period after the first signal.
    #[error("{signal} received; the graceful stop did not end within {} ms", grace.as_millis())]
    GraceElapsed {
        /// The first signal.
        signal: Signal,
        /// The grace period.
        grace: Duration,
    },
    /// A second signal came while the piece was stopping.
    #[error("{second} received while stopping after {first}; exiting at once")]
    SecondSignal {
        /// The signal that started the graceful stop.
        first: Signal,
        /// The signal that ended it.
        second: Signal,
    },
}

/// The process's SIGTERM and SIGINT, listened to from [`Signals::install`] on: once installed,
/// neither kills the process any more (their default action), they are delivered here.
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Signals {
    /// Starts listening for SIGTERM and SIGINT (inside a Tokio runtime).
    pub fn install() -> Result<Self, ShutdownError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind, name| {
                signal(kind).map_err(|source| ShutdownError::Install {
                    signal: name,
                    source,
                })
            };
            Ok(Self {
                terminate: listen(SignalKind::terminate(), "SIGTERM")?,
                interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Signal::Terminate,
                _ = self.interrupt.recv() => Signal::Interrupt,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => Signal::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Completes on the first SIGTERM or SIGINT received from now on, with that signal.
///
/// ```no_run
/// # async fn example() -> Result<(), eventfold::shutdown::ShutdownError> {
/// let received = eventfold::shutdown::signal().await?;
/// println!("{received} received; stopping");
/// # Ok(())
/// # }
/// ```
pub async fn signal() -> Result<Signal, ShutdownError> {
    let mut signals = Signals::install()?;
    Ok(signals.recv().await)
}

/// The shutdown future [`run_until_signal`] hands to the pieces it runs: completes on the first
/// signal. Clone it to give one to each piece.
pub struct Stop {
    received: watch::Receiver<Option<Signal>>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stop")
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl Clone for Stop {
    fn clone(&self) -> Self {
        Self {
            received: self.received.clone(),
            waiting: None,
        }
    }
}

impl Stop {
    /// A stop that completes when `stop` is sent `Some` (or dropped).
    fn new(received: watch::Receiver<Option<Signal>>) -> Self {
        Self {
            received,
            waiting: None,
        }
    }

    /// The signal that asked to stop, once one came.
    pub fn received(&self) -> Option<Signal> {
        *self.received.borrow()
    }
}

impl Future for Stop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let waiting = this.waiting.get_or_insert_with(|| {
            let mut received = this.received.clone();
            Box::pin(async move {
                // A dropped sender (the runner of the pieces is gone) also means stop.
                let _ = received.wait_for(Option::is_some).await;
            })
        });
        waiting.as_mut().poll(cx)
    }
}

/// What [`run_until_signal`] ran returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped<T> {
    /// The output of the pieces.
    pub output: T,
    /// The signal that stopped them; `None` when they returned before any signal.
    pub signal: Option<Signal>,
}

/// Runs `run(stop)` until it returns; `stop` completes on the first SIGTERM or SIGINT, after
/// which `run` has `grace` to return.
///
/// Returns what `run` returned and the signal, if any, or an error when the grace elapsed
/// ([`ShutdownError::GraceElapsed`]) or a second signal came ([`ShutdownError::SecondSignal`]):
/// the future of `run` is then dropped, and a binary should exit with status 1 at once (the
/// pieces' leases expire after their TTL). The handlers are installed before `run` is called,
/// so that no signal takes its default action (ending the process mid-batch) from then on.
///
/// ```no_run
/// # use std::time::Duration;
/// # use eventfold::eventstore::memory::MemoryStore;
/// # use eventfold::projections::Projections;
/// # async fn example(projections: Projections<MemoryStore>) -> Result<(), Box<dyn std::error::Error>> {
/// let stopped = eventfold::shutdown::run_until_signal(Duration::from_secs(10), |stop| {
///     projections.runner().run(stop)
/// })
/// .await?;
/// stopped.output?;
/// # Ok(())
/// # }
/// ```
pub async fn run_until_signal<T, F>(
    grace: Duration,
    run: impl FnOnce(Stop) -> F,
) -> Result<Stopped<T>, ShutdownError>
where
    F: Future<Output = T>,
{
    let mut signals = Signals::install()?;
    let (send, received) = watch::channel(None);
    let running = run(Stop::new(received));
    tokio::pin!(running);
    let first = tokio::select! {
        output = &mut running => return Ok(Stopped { output, signal: None }),
        first = signals.recv() => first,
    };
    let _ = send.send(Some(first));
    tokio::select! {
        ended = tokio::time::timeout(grace, &mut running) => match ended {
            Ok(output) => Ok(Stopped { output, signal: Some(first) }),
            Err(_) => Err(ShutdownError::GraceElapsed { signal: first, grace }),
        },
        second = signals.recv() => Err(ShutdownError::SecondSignal { first, second }),
    }
}
