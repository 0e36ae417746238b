//! Going forward: the inputs (a reply, a timer, an operator's retry) and the steps they start,
//! until the saga waits, completes, or begins to compensate.

use super::*;

impl<D: SagaData> Machine<'_, D> {
    pub(super) fn on_reply(&mut self, reply: Reply) -> Result<(), SagaError> {
        let Some((step, step_def)) = self.known_step(&reply.step) else {
            return Ok(());
        };
        match reply.kind {
            CommandKind::Action => {
                if step.phase != StepPhase::InFlight {
                    // the success of an attempt that had timed out (the fence let only that in)
                    if self.state.status == SagaStatus::Running {
                        self.cancel(&step.name, step.attempt, TimerKind::RetryBackoff);
                        return self.succeed(step_def, step.attempt, &reply.outcome);
                    }
                    self.emit(SagaEvent::StepSucceededLate {
                        step: step.name,
                        attempt: reply.attempt,
                    });
                    return Ok(());
                }
                if step_def.timeout.is_some() {
                    self.cancel(&step.name, step.attempt, TimerKind::Timeout);
                }
                match &reply.outcome {
                    Outcome::Success { .. } => self.succeed(step_def, step.attempt, &reply.outcome),
                    Outcome::Failure { reason, retryable } => {
                        self.attempt_failed(
                            step_def,
                            step.attempt,
                            reason.clone(),
                            *retryable,
                            false,
                        );
                        Ok(())
                    }
                }
            }
            CommandKind::Compensation => {
                if step_def.timeout.is_some() {
                    self.cancel(&step.name, reply.attempt, TimerKind::CompensationTimeout);
                }
                match reply.outcome {
                    Outcome::Success { .. } => {
                        self.emit(SagaEvent::StepCompensated {
                            step: step.name,
                            attempt: reply.attempt,
                        });
                    }
                    Outcome::Failure { reason, .. } => {
                        self.compensation_failed(step_def, reply.attempt, reason);
                    }
                }
                Ok(())
            }
        }
    }

    /// Attempt `attempt` of `step` succeeded (a reply, or a local run) with `data`: the data is
    /// kept, the step succeeded, and a pivot step is passed.
    pub(super) fn step_succeeded(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        data: D,
    ) -> Result<(), SagaError> {
        self.set_data(data)?;
        self.emit(SagaEvent::StepSucceeded {
            step: step.name.clone(),
            attempt,
        });
        if step.pivot {
            self.emit(SagaEvent::PivotPassed {
                step: step.name.clone(),
            });
        }
        Ok(())
    }

    /// A success reply for the current attempt of a step.
    pub(super) fn succeed(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        outcome: &Outcome,
    ) -> Result<(), SagaError> {
        if self.state.status != SagaStatus::Running {
            // compensation began: the step is done, it will be compensated, never continued
            self.emit(SagaEvent::StepSucceeded {
                step: step.name.clone(),
                attempt,
            });
            return Ok(());
        }
        let payload = match outcome {
            Outcome::Success { payload } => payload.clone(),
            Outcome::Failure { .. } => Value::Null,
        };
        let handled = match &step.on_reply {
            Some(handle) => {
                let mut data = self.data.clone();
                handle(&mut data, &payload).map(|()| data)
            }
            None => Ok(self.data.clone()),
        };
        match handled {
            Ok(data) => self.step_succeeded(step, attempt, data)?,
            Err(error) => {
                // the participant acted, the saga refuses the result
                self.emit(SagaEvent::StepSucceeded {
                    step: step.name.clone(),
                    attempt,
                });
                let reason = format!("the reply of step {} was refused: {error}", step.name);
                if self.state.pivot_passed {
                    self.fail(format!(
                        "{reason} (after the pivot, nothing is compensated)"
                    ));
                } else {
                    self.emit(SagaEvent::CompensationStarted {
                        step: step.name.clone(),
                        reason,
                    });
                    self.cancel_retries();
                }
            }
        }
        Ok(())
    }

    /// An attempt of a step failed (`timed_out`: its outcome is unknown).
    pub(super) fn attempt_failed(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        reason: String,
        retryable: bool,
        timed_out: bool,
    ) {
        let name = step.name.clone();
        if timed_out {
            self.emit(SagaEvent::StepTimedOut {
                step: name.clone(),
                attempt,
            });
        } else {
            self.emit(SagaEvent::StepFailed {
                step: name.clone(),
                attempt,
                reason: reason.clone(),
            });
        }
        if self.state.status != SagaStatus::Running {
            return; // compensating: no new attempt
        }
        let forward_only = self.state.pivot_passed;
        let retry = forward_only || ((retryable || timed_out) && attempt < step.retry.max_attempts);
        if retry {
            let after = step.retry.delay_after(attempt);
            let due_at = due(self.now, after);
            self.emit(SagaEvent::StepRetryScheduled {
                step: name.clone(),
                attempt,
                due_at,
            });
            self.timer(&name, attempt, TimerKind::RetryBackoff, after);
        } else {
            let reason = if timed_out {
                format!("step {name} timed out (attempt {attempt})")
            } else {
                format!("step {name} failed (attempt {attempt}): {reason}")
            };
            self.emit(SagaEvent::CompensationStarted { step: name, reason });
            self.cancel_retries();
        }
    }

    /// Compensation began: steps waiting for a retry will not be retried.
    pub(super) fn cancel_retries(&mut self) {
        let waiting: Vec<(String, u32)> = self
            .state
            .steps
            .iter()
            .filter(|s| s.phase == StepPhase::WaitingRetry)
            .map(|s| (s.name.clone(), s.attempt))
            .collect();
        for (step, attempt) in waiting {
            self.cancel(&step, attempt, TimerKind::RetryBackoff);
        }
    }

    pub(super) fn on_timer(&mut self, key: TimerKey) -> Result<(), SagaError> {
        let Some((step, step_def)) = self.known_step(&key.step) else {
            return Ok(());
        };
        match key.kind {
            TimerKind::Timeout => {
                self.attempt_failed(step_def, step.attempt, "timed out".into(), true, true);
                Ok(())
            }
            TimerKind::RetryBackoff => self.start_attempt(step_def, step.attempt + 1),
            TimerKind::CompensationTimeout => {
                self.compensation_failed(step_def, key.attempt, "timed out".into());
                Ok(())
            }
            TimerKind::CompensationRetry => {
                self.start_compensation(step_def, step.compensation_attempt + 1)
            }
        }
    }

    pub(super) fn on_retry_parked(&mut self) -> Result<(), SagaError> {
        let SagaStatus::CompensationFailed { step, .. } = self.state.status.clone() else {
            return Ok(());
        };
        let Some(step_def) = self.step_def(&step) else {
            return Ok(());
        };
        let attempt = self
            .step_state(&step)
            .map(|s| s.compensation_attempt)
            .unwrap_or(0);
        self.emit(SagaEvent::Resumed { step: step.clone() });
        tracing::info!(saga_type = self.def.saga_type(), saga_id = %self.state.saga_id, %step, "parked saga resumed");
        self.start_compensation(step_def, attempt + 1)
    }

    // ---- going forward --------------------------------------------------------------------

    /// Starts an attempt of a step's action: a command (with its timeout) or a local run.
    pub(super) fn start_attempt(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
    ) -> Result<(), SagaError> {
        self.emit(SagaEvent::StepStarted {
            step: step.name.clone(),
            attempt,
        });
        match &step.action {
            Work::Invoke(build) => match build(&self.data) {
                Ok(cmd) => self.send(step, attempt, CommandKind::Action, TimerKind::Timeout, cmd),
                Err(StepError { message, retryable }) => {
                    let reason = format!("the command could not be built: {message}");
                    self.attempt_failed(step, attempt, reason, retryable, false);
                }
            },
            Work::Local(run) => {
                let mut data = self.data.clone();
                match run(&mut data) {
                    Ok(()) => self.step_succeeded(step, attempt, data)?,
                    Err(StepError { message, retryable }) => {
                        self.attempt_failed(step, attempt, message, retryable, false);
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the saga as far as it goes without waiting.
    pub(super) fn drive(&mut self) -> Result<(), SagaError> {
        loop {
            let progressed = match self.state.status {
                SagaStatus::Running => self.forward_once()?,
                SagaStatus::Compensating => self.compensate_once()?,
                _ => false,
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Starts what can start; `true` if anything changed.
    pub(super) fn forward_once(&mut self) -> Result<bool, SagaError> {
        let stages = &self.def.inner.stages;
        let current = match self.state.steps.iter().max_by_key(|s| s.start_index) {
            None => 0,
            Some(latest) => match self.def.stage_of(&latest.name) {
                Some(stage) => stage,
                None => {
                    let name = latest.name.clone();
                    self.step_def(&name);
                    return Ok(true);
                }
            },
        };
        // steps of the current stage that never started (the first stage; or a step a newer
        // definition added to the running parallel group)
        let mut progressed = false;
        for &index in &stages[current] {
            let step = &self.def.inner.steps[index];
            if self.state.status != SagaStatus::Running {
                break;
            }
            if self.step_state(&step.name).is_none() {
                self.start_attempt(step, 1)?;
                progressed = true;
            }
        }
        if progressed || self.state.status != SagaStatus::Running {
            return Ok(true);
        }
        let done = stages[current].iter().all(|&index| {
            self.step_state(&self.def.inner.steps[index].name)
                .is_some_and(|s| s.phase == StepPhase::Succeeded)
        });
        if !done {
            return Ok(false);
        }
        match stages.get(current + 1) {
            None => self.emit(SagaEvent::Completed),
            Some(next) => {
                for &index in next {
                    if self.state.status != SagaStatus::Running {
                        break;
                    }
                    self.start_attempt(&self.def.inner.steps[index], 1)?;
                }
            }
        }
        Ok(true)
    }
}
