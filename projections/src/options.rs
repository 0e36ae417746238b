//! The options and reports shared by the registry, the engine and the runner: how a projection
//! runs ([`ProjectionOptions`], [`ErrorPolicy`]) and how a rebuild goes ([`RebuildMode`],
//! [`RebuildProgress`], [`RebuildReport`]). Re-exported from [`crate::registry`] and the crate root.

use std::time::Duration;

/// What a projection does with an event that keeps failing after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Park it in `{prefix}projection_dead` with its error and go on (the default).
    #[default]
    Park,
    /// Stop the projection (status `failed`, the error in `last_error`); others go on.
    Stop,
}

/// How a projection is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionOptions {
    /// Events read and applied per transaction (default 500).
    pub batch_size: usize,
    /// What to do with an event that keeps failing (default [`ErrorPolicy::Park`]).
    pub policy: ErrorPolicy,
    /// Attempts per event before the policy applies (default 3).
    pub max_attempts: u32,
    /// First retry delay; doubles with every attempt (default 50 ms).
    pub backoff: Duration,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            policy: ErrorPolicy::Park,
            max_attempts: 3,
            backoff: Duration::from_millis(50),
        }
    }
}

impl ProjectionOptions {
    /// Events per transaction (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// The error policy.
    pub fn policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Attempts per event (at least 1) and the first retry delay.
    pub fn retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff = backoff;
        self
    }
}

/// How to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildMode {
    /// Reset the tables and the checkpoint, replay from the start (readers see the model grow).
    InPlace,
    /// Build a new generation beside the active one, then switch readers atomically.
    BlueGreen {
        /// Drop the old generation's tables after the switch.
        drop_old: bool,
    },
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events applied so far.
    pub applied: u64,
    /// The highest global position applied.
    pub position: u64,
    /// The log head when the rebuild started (or `position`, when higher).
    pub head: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RebuildReport {
    /// The projection.
    pub name: String,
    /// The generation readers see now.
    pub generation: u32,
    /// Events applied.
    pub applied: u64,
    /// How long it took.
    pub seconds: f64,
    /// Tables dropped (blue/green with `drop_old`).
    pub dropped: Vec<String>,
}
