//! The definition DSL: [`Saga::define`] → [`SagaBuilder`] → [`SagaDefinition`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{DefinitionError, MigrationError, StepError};
use crate::message::Command;

/// What saga data must be: serde (it is stored as JSON in the saga's events), clonable and
/// shareable. Implemented for every such type.
pub trait SagaData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaData for T {}

pub(crate) type BuildCommand<D> = Arc<dyn Fn(&D) -> Result<Command, StepError> + Send + Sync>;
pub(crate) type LocalFn<D> = Arc<dyn Fn(&mut D) -> Result<(), StepError> + Send + Sync>;
pub(crate) type OnReplyFn<D> = Arc<dyn Fn(&mut D, &Value) -> Result<(), StepError> + Send + Sync>;
pub(crate) type MigrateFn = Arc<dyn Fn(Value) -> Result<Value, MigrationError> + Send + Sync>;

/// How a step (or a compensation) is carried out.
pub(crate) enum Work<D> {
    /// A command to a participant; a reply is expected.
    Invoke(BuildCommand<D>),
    /// A pure function run within the transition (in the saga's transaction).
    Local(LocalFn<D>),
}

impl<D> Clone for Work<D> {
    fn clone(&self) -> Self {
        match self {
            Work::Invoke(f) => Work::Invoke(f.clone()),
            Work::Local(f) => Work::Local(f.clone()),
        }
    }
}

/// A retry policy: how many attempts, and the backoff between them.
///
/// The delay before attempt `n + 1` is `initial * factor^(n - 1)`, capped at `max_delay`.
///
/// ```
/// use std::time::Duration;
/// use eventfold_saga::RetryPolicy;
///
/// let p = RetryPolicy::exponential(4, Duration::from_millis(100), 2.0, Duration::from_millis(300));
/// assert_eq!(p.delay_after(1), Duration::from_millis(100));
/// assert_eq!(p.delay_after(2), Duration::from_millis(200));
/// assert_eq!(p.delay_after(3), Duration::from_millis(300)); // capped
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1; 1 means no retry).
    pub max_attempts: u32,
    /// The delay after the first attempt.
    pub initial_delay: Duration,
    /// The growth factor of the delay (at least 1.0).
    pub factor: f64,
    /// The largest delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry (the default of a step's action).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            initial_delay: Duration::ZERO,
            factor: 1.0,
            max_delay: Duration::ZERO,
        }
    }

    /// `max_attempts` attempts, `delay` apart.
    pub fn fixed(max_attempts: u32, delay: Duration) -> Self {
        Self {
            max_attempts,
            initial_delay: delay,
            factor: 1.0,
            max_delay: delay,
        }
    }

    /// `max_attempts` attempts with an exponential backoff.
    pub fn exponential(
        max_attempts: u32,
        initial_delay: Duration,
        factor: f64,
        max_delay: Duration,
    ) -> Self {
        Self {
            max_attempts,
            initial_delay,
            factor,
            max_delay,
        }
    }

    /// The default of a compensation: 5 attempts, 1 s doubling up to 60 s, then the saga parks.
    pub fn default_compensation() -> Self {
        Self::exponential(5, Duration::from_secs(1), 2.0, Duration::from_secs(60))
    }

    /// The delay after the failed attempt `attempt` (1-based) before the next one.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.factor.powi(exponent);
        let delay = Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay);
        delay.min(self.max_delay.max(self.initial_delay))
    }

    fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(format!(
                "the factor must be a finite number >= 1.0, not {}",
                self.factor
            ));
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::none()
    }
}

/// The entry point of the DSL: `Saga::<Data>::define(type, version)`.
///
/// ```
/// use std::time::Duration;
/// use eventfold_saga::{Command, RetryPolicy, Saga};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Transfer { from: String, to: String, cents: u64, debited: bool }
///
/// let definition = Saga::<Transfer>::define("bank.transfer", 1)
///     .step("debit", |s| {
///         s.invoke(|t: &Transfer| Command::new("accounts.commands", "account.debit",
///                 &serde_json::json!({ "account": t.from, "cents": t.cents })))
///             .on_reply(|t: &mut Transfer, _: serde_json::Value| { t.debited = true; Ok(()) })
///             .compensate(|t: &Transfer| Command::new("accounts.commands", "account.credit",
///                 &serde_json::json!({ "account": t.from, "cents": t.cents })))
///             .timeout(Duration::from_secs(30))
///             .retry(RetryPolicy::exponential(3, Duration::from_millis(100), 2.0, Duration::from_secs(5)))
///     })
///     .pivot("credit", |s| {
///         s.invoke(|t: &Transfer| Command::new("accounts.commands", "account.credit",
///             &serde_json::json!({ "account": t.to, "cents": t.cents })))
///             .timeout(Duration::from_secs(30))
///     })
///     .build()?;
/// assert_eq!(definition.step_names(), vec!["debit", "credit"]);
/// # Ok::<(), eventfold_saga::DefinitionError>(())
/// ```
pub struct Saga<D>(PhantomData<fn() -> D>);

impl<D: SagaData> Saga<D> {
    /// Starts the definition of a saga type at a definition version (1 for the first).
    pub fn define(saga_type: impl Into<String>, version: u32) -> SagaBuilder<D> {
        SagaBuilder {
            saga_type: saga_type.into(),
            version,
            stages: Vec::new(),
            migrations: Vec::new(),
        }
    }
}

enum StageSpec<D> {
    Single(StepBuilder<D>),
    Parallel(Vec<StepBuilder<D>>),
}

/// Builds a [`SagaDefinition`]: stages in order (single steps, parallel groups, at most one
/// pivot), data migrations, then [`build`](Self::build).
pub struct SagaBuilder<D> {
    saga_type: String,
    version: u32,
    stages: Vec<StageSpec<D>>,
    migrations: Vec<(u32, MigrateFn)>,
}

impl<D: SagaData> SagaBuilder<D> {
    /// Appends a step; `configure` sets its action, compensation, timeout and retries.
    pub fn step(
        mut self,
        name: impl Into<String>,
        configure: impl FnOnce(StepBuilder<D>) -> StepBuilder<D>,
    ) -> Self {
        self.stages
            .push(StageSpec::Single(configure(StepBuilder::new(name.into()))));
        self
    }

    /// Appends the pivot: the step after whose success the saga only goes forward (the steps
    /// after it have no compensation and are retried until they succeed).
    pub fn pivot(
        mut self,
        name: impl Into<String>,
        configure: impl FnOnce(StepBuilder<D>) -> StepBuilder<D>,
    ) -> Self {
        let mut step = configure(StepBuilder::new(name.into()));
        step.pivot = true;
        self.stages.push(StageSpec::Single(step));
        self
    }

    /// Appends a parallel group (fork/join): its steps start together, the saga goes on when all
    /// of them succeeded.
    pub fn parallel(
        mut self,
        configure: impl FnOnce(ParallelBuilder<D>) -> ParallelBuilder<D>,
    ) -> Self {
        let group = configure(ParallelBuilder { steps: Vec::new() });
        self.stages.push(StageSpec::Parallel(group.steps));
        self
    }

    /// Registers the migration of saga data stored by definition version `from_version` to
    /// version `from_version + 1`. A running instance of an older version is brought up to date
    /// by the chain of migrations when its next input is decided (a version without a
    /// migration keeps its data as it is: serde defaults cover added fields).
    pub fn migrate_from(
        mut self,
        from_version: u32,
        migrate: impl Fn(Value) -> Result<Value, MigrationError> + Send + Sync + 'static,
    ) -> Self {
        self.migrations.push((from_version, Arc::new(migrate)));
        self
    }

    /// Validates and builds the definition.
    pub fn build(self) -> Result<SagaDefinition<D>, DefinitionError> {
        let saga_type = self.saga_type;
        if saga_type.is_empty() {
            return Err(DefinitionError::EmptySagaType);
        }
        if self.version == 0 {
            return Err(DefinitionError::ZeroVersion { saga_type });
        }
        let mut steps: Vec<StepDef<D>> = Vec::new();
        let mut stages: Vec<Vec<usize>> = Vec::new();
        let mut names = HashSet::new();
        let mut pivot: Option<usize> = None;
        for (position, stage) in self.stages.into_iter().enumerate() {
            let (builders, parallel) = match stage {
                StageSpec::Single(step) => (vec![step], false),
                StageSpec::Parallel(group) => {
                    if group.is_empty() {
                        return Err(DefinitionError::EmptyParallelGroup {
                            saga_type,
                            group: position + 1,
                        });
                    }
                    (group, true)
                }
            };
            let mut indexes = Vec::new();
            for builder in builders {
                let step = builder.finish(&saga_type)?;
                if !names.insert(step.name.clone()) {
                    return Err(DefinitionError::DuplicateStep {
                        saga_type,
                        step: step.name,
                    });
                }
                if pivot.is_some() && step.compensation.is_some() {
                    return Err(DefinitionError::CompensationAfterPivot {
                        saga_type,
                        step: step.name,
                    });
                }
                if step.pivot {
                    if pivot.is_some() || parallel {
                        return Err(DefinitionError::SecondPivot {
                            saga_type,
                            step: step.name,
                        });
                    }
                    pivot = Some(steps.len());
                }
                indexes.push(steps.len());
                steps.push(step);
            }
            stages.push(indexes);
        }
        if steps.is_empty() {
            return Err(DefinitionError::NoSteps { saga_type });
        }
        let mut migrations = BTreeMap::new();
        for (from, migrate) in self.migrations {
            if from >= self.version {
                return Err(DefinitionError::InvalidMigration {
                    saga_type,
                    from,
                    version: self.version,
                });
            }
            if migrations.insert(from, migrate).is_some() {
                return Err(DefinitionError::DuplicateMigration { saga_type, from });
            }
        }
        let mut index = HashMap::new();
        for (stage_index, stage) in stages.iter().enumerate() {
            for &step_index in stage {
                index.insert(steps[step_index].name.clone(), (step_index, stage_index));
            }
        }
        Ok(SagaDefinition {
            inner: Arc::new(Inner {
                saga_type,
                version: self.version,
                steps,
                stages,
                index,
                migrations,
            }),
        })
    }
}

/// The steps of a parallel group, given to [`SagaBuilder::parallel`].
pub struct ParallelBuilder<D> {
    steps: Vec<StepBuilder<D>>,
}

impl<D: SagaData> ParallelBuilder<D> {
    /// Adds a branch to the group.
    pub fn step(
        mut self,
        name: impl Into<String>,
        configure: impl FnOnce(StepBuilder<D>) -> StepBuilder<D>,
    ) -> Self {
        self.steps.push(configure(StepBuilder::new(name.into())));
        self
    }
}

/// One step under construction: exactly one action ([`invoke`](Self::invoke) or
/// [`local`](Self::local)), optionally a reply handler, a compensation, a timeout and retry
/// policies.
pub struct StepBuilder<D> {
    name: String,
    action: Option<Work<D>>,
    on_reply: Option<OnReplyFn<D>>,
    compensation: Option<Work<D>>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    compensate_on_failure: bool,
    pivot: bool,
}

impl<D: SagaData> StepBuilder<D> {
    fn new(name: String) -> Self {
        Self {
            name,
            action: None,
            on_reply: None,
            compensation: None,
            timeout: None,
            retry: RetryPolicy::none(),
            compensation_retry: RetryPolicy::default_compensation(),
            compensate_on_failure: false,
            pivot: false,
        }
    }

    /// The step invokes a participant: `build` makes the command from the saga data; a reply is
    /// expected. An error of `build` is a failure of the step (nothing was sent).
    pub fn invoke(
        mut self,
        build: impl Fn(&D) -> Result<Command, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.action = Some(Work::Invoke(Arc::new(build)));
        self
    }

    /// The step runs locally, within the transition (the runtime runs the transition in the
    /// saga's transaction). An error undoes the function's changes to the data and is a failure
    /// of the step.
    pub fn local(
        mut self,
        run: impl Fn(&mut D) -> Result<(), StepError> + Send + Sync + 'static,
    ) -> Self {
        self.action = Some(Work::Local(Arc::new(run)));
        self
    }

    /// Handles a success reply: the payload is decoded into `T` (use `serde_json::Value` for
    /// the raw JSON) and may update the data. An error (including a payload that does not
    /// decode) means the participant acted but the saga refuses the result: the step counts as
    /// done and the saga compensates it (after the pivot, where nothing is compensated, the saga
    /// ends `Failed`).
    pub fn on_reply<T: DeserializeOwned>(
        mut self,
        handle: impl Fn(&mut D, T) -> Result<(), StepError> + Send + Sync + 'static,
    ) -> Self {
        let step = self.name.clone();
        self.on_reply = Some(Arc::new(move |data: &mut D, payload: &Value| {
            let reply = T::deserialize(payload).map_err(|e| {
                StepError::new(format!("the reply of step {step} does not decode: {e}"))
            })?;
            handle(data, reply)
        }));
        self
    }

    /// The compensation is a command to a participant (a reply expected). It must be idempotent:
    /// it may be sent for a step whose outcome is unknown, and it may be retried.
    pub fn compensate(
        mut self,
        build: impl Fn(&D) -> Result<Command, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.compensation = Some(Work::Invoke(Arc::new(build)));
        self
    }

    /// The compensation runs locally, within the transition.
    pub fn compensate_local(
        mut self,
        run: impl Fn(&mut D) -> Result<(), StepError> + Send + Sync + 'static,
    ) -> Self {
        self.compensation = Some(Work::Local(Arc::new(run)));
        self
    }

    /// How long an attempt (of the action or of the compensation) waits for its reply before it
    /// counts as timed out. Without a timeout the step waits for its reply indefinitely.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The retry policy of the action, applied to timeouts and retryable failures (a definitive
    /// failure is never retried). Default: [`RetryPolicy::none`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The retry policy of the compensation; when it is exhausted the saga parks.
    /// Default: [`RetryPolicy::default_compensation`].
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// Whether the step is compensated after a *failure* of its own (default `false`: a
    /// definitive failure means it had no effect). A timed-out step is always compensated.
    pub fn compensate_on_failure(mut self, yes: bool) -> Self {
        self.compensate_on_failure = yes;
        self
    }

    fn finish(self, saga_type: &str) -> Result<StepDef<D>, DefinitionError> {
        if self.name.is_empty() {
            return Err(DefinitionError::EmptyStepName {
                saga_type: saga_type.to_owned(),
            });
        }
        let Some(action) = self.action else {
            return Err(DefinitionError::MissingAction {
                saga_type: saga_type.to_owned(),
                step: self.name,
            });
        };
        if matches!(action, Work::Local(_)) && self.on_reply.is_some() {
            return Err(DefinitionError::ReplyHandlerOnLocalStep {
                saga_type: saga_type.to_owned(),
                step: self.name,
            });
        }
        for policy in [&self.retry, &self.compensation_retry] {
            if let Err(reason) = policy.check() {
                return Err(DefinitionError::InvalidRetryPolicy {
                    saga_type: saga_type.to_owned(),
                    step: self.name,
                    reason,
                });
            }
        }
        Ok(StepDef {
            name: self.name,
            action,
            on_reply: self.on_reply,
            compensation: self.compensation,
            timeout: self.timeout,
            retry: self.retry,
            compensation_retry: self.compensation_retry,
            compensate_on_failure: self.compensate_on_failure,
            pivot: self.pivot,
        })
    }
}

pub(crate) struct StepDef<D> {
    pub(crate) name: String,
    pub(crate) action: Work<D>,
    pub(crate) on_reply: Option<OnReplyFn<D>>,
    pub(crate) compensation: Option<Work<D>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
    pub(crate) compensate_on_failure: bool,
    pub(crate) pivot: bool,
}

pub(crate) struct Inner<D> {
    pub(crate) saga_type: String,
    pub(crate) version: u32,
    pub(crate) steps: Vec<StepDef<D>>,
    pub(crate) stages: Vec<Vec<usize>>,
    /// step name → (step index, stage index)
    pub(crate) index: HashMap<String, (usize, usize)>,
    pub(crate) migrations: BTreeMap<u32, MigrateFn>,
}

/// A validated saga definition: its type, version, stages of steps and data migrations. Cheap to
/// clone (shared). Drive it with [`SagaDefinition::decide`].
pub struct SagaDefinition<D> {
    pub(crate) inner: Arc<Inner<D>>,
}

impl<D> Clone for SagaDefinition<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D> fmt::Debug for SagaDefinition<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("saga_type", &self.inner.saga_type)
            .field("version", &self.inner.version)
            .field("stages", &self.stages())
            .finish()
    }
}

/// A step's description, for listings and tooling ([`SagaDefinition::step_info`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// The stable name.
    pub name: String,
    /// `true` for a local step, `false` for a participant invocation.
    pub local: bool,
    /// Whether the step has a compensation.
    pub compensable: bool,
    /// Whether the compensation is local.
    pub local_compensation: bool,
    /// Whether the step is the pivot.
    pub pivot: bool,
    /// The timeout of an attempt.
    pub timeout: Option<Duration>,
    /// The action's retry policy.
    pub retry: RetryPolicy,
    /// The compensation's retry policy.
    pub compensation_retry: RetryPolicy,
    /// Whether a failed step is compensated.
    pub compensate_on_failure: bool,
}

impl<D> SagaDefinition<D> {
    /// The saga type, e.g. `order.place`.
    pub fn saga_type(&self) -> &str {
        &self.inner.saga_type
    }

    /// The definition version.
    pub fn version(&self) -> u32 {
        self.inner.version
    }

    /// Every step name, in definition order.
    pub fn step_names(&self) -> Vec<&str> {
        self.inner.steps.iter().map(|s| s.name.as_str()).collect()
    }

    /// The stages: each a list of step names (one for a single step, several for a parallel
    /// group).
    pub fn stages(&self) -> Vec<Vec<&str>> {
        self.inner
            .stages
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|&i| self.inner.steps[i].name.as_str())
                    .collect()
            })
            .collect()
    }

    /// The pivot's name, if the saga has one.
    pub fn pivot(&self) -> Option<&str> {
        self.inner
            .steps
            .iter()
            .find(|s| s.pivot)
            .map(|s| s.name.as_str())
    }

    /// A step's description, `None` for an unknown name.
    pub fn step_info(&self, name: &str) -> Option<StepInfo> {
        let step = self.step(name)?;
        Some(StepInfo {
            name: step.name.clone(),
            local: matches!(step.action, Work::Local(_)),
            compensable: step.compensation.is_some(),
            local_compensation: matches!(step.compensation, Some(Work::Local(_))),
            pivot: step.pivot,
            timeout: step.timeout,
            retry: step.retry.clone(),
            compensation_retry: step.compensation_retry.clone(),
            compensate_on_failure: step.compensate_on_failure,
        })
    }

    pub(crate) fn step(&self, name: &str) -> Option<&StepDef<D>> {
        self.inner
            .index
            .get(name)
            .map(|&(index, _)| &self.inner.steps[index])
    }

    pub(crate) fn stage_of(&self, name: &str) -> Option<usize> {
        self.inner.index.get(name).map(|&(_, stage)| stage)
    }
}
