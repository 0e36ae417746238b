//! The two ways to run the same business flow (reserve the stock, charge the payment, ship,
//! confirm; or release, refund and reject):
//!
//! * [`orchestrated`]: the order service runs a saga that sends each service a command and waits
//!   for its reply, with compensations and a timeout on the payment;
//! * [`choreographed`]: each service reacts to the others' events, nobody in charge.
//!
//! Both place orders through a [`Flow`] and leave their background work (relays, consumers,
//! timers, projections) in [`Running`], so the workload and the report do not care which one
//! runs.

pub mod choreographed;
pub mod orchestrated;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use eventfold::BoxError;
use eventfold::projections::RunnerHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::messages::PlaceOrder;
use crate::services::ShopStore;
use crate::workload::Placed;

/// Which style runs the flow (`--style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Style {
    /// A saga in the order service commands the others.
    #[default]
    Orchestrated,
    /// The services react to each other's events.
    Choreographed,
}

impl Style {
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Orchestrated => "orchestrated",
            Style::Choreographed => "choreographed",
        }
    }
}

/// How a style takes an order: the customer-facing side of the order service.
pub trait Flow: Send + Sync {
    /// Places an order, and starts what follows, in one transaction of the order service.
    fn place(
        &self,
        order: &PlaceOrder,
        correlation_id: Uuid,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Waits, at most `limit`, until everything that follows the decision of `orders` is done
    /// (the saga's last reply, the shipment, the refund, the release).
    fn settle(
        &self,
        orders: &[Placed],
        limit: Duration,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The services' background work: every relay, consumer and scheduler as a task, and the
/// projection runners. [`stop`](Self::stop) ends them all and reports any that failed.
pub struct Running<S: ShopStore> {
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), String>>,
    runners: Vec<(S, RunnerHandle<S>)>,
}

impl<S: ShopStore> Default for Running<S> {
    fn default() -> Self {
        Self {
            shutdown: watch::channel(false).0,
            tasks: JoinSet::new(),
            runners: Vec::new(),
        }
    }
}

impl<S: ShopStore> Running<S> {
    /// Completes when [`stop`](Self::stop) is called: what `run(shutdown)` methods take.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.shutdown.subscribe();
        async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    }

    /// Runs `work` (something's `run(shutdown)`) as a task named `name`.
    pub fn spawn<E: Display>(
        &mut self,
        name: impl Into<String>,
        work: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let name = name.into();
        self.tasks
            .spawn(async move { work.await.map_err(|e| format!("{name}: {e}")) });
    }

    /// Keeps the projection runner of `store`, to stop it with the rest.
    pub fn keep(&mut self, store: &S, runner: RunnerHandle<S>) {
        self.runners.push((store.clone(), runner));
    }

    /// Stops everything, the projections once they have caught up with the last events; the
    /// failures, if any task failed.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        let _ = self.shutdown.send(true);
        let mut failures = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("a task panicked: {e}")),
            }
        }
        for (store, runner) in self.runners {
            let caught_up = async {
                let head = store.log_head().await?.position;
                tokio::time::timeout(Duration::from_secs(30), runner.wait_for(head))
                    .await
                    .map_err(|_| "the projections did not catch up within 30 s")??;
                Ok::<_, BoxError>(())
            };
            if let Err(e) = caught_up.await {
                failures.push(format!("projections: {e}"));
            }
            if let Err(e) = runner.stop().await {
                failures.push(format!("projections: {e}"));
            }
        }
        match failures.first() {
            None => Ok(()),
            Some(_) => Err(failures.join("; ").into()),
        }
    }
}
