//! Going backward: which started steps need their compensation, running them in reverse order
//! of start, each at most once, and parking the saga when one keeps failing.

use super::*;

impl<D: SagaData> Machine<'_, D> {
    /// Whether a step that started needs its compensation.
    pub(super) fn needs_compensation(step: &StepState, def: &StepDef<D>) -> bool {
        if def.compensation.is_none() {
            return false;
        }
        match step.phase {
            StepPhase::Succeeded => true,
            StepPhase::InFlight => false,
            StepPhase::TimedOut | StepPhase::WaitingRetry | StepPhase::Failed => {
                step.succeeded_late || step.timed_out || def.compensate_on_failure
            }
        }
    }

    /// Issues the next compensation; `true` if anything changed.
    pub(super) fn compensate_once(&mut self) -> Result<bool, SagaError> {
        // siblings still in flight are awaited (until they reply or time out)
        if self
            .state
            .steps
            .iter()
            .any(|s| s.phase == StepPhase::InFlight)
        {
            return Ok(false);
        }
        let mut pending: Vec<&StepState> = Vec::new();
        for step in &self.state.steps {
            if step.compensation == CompensationPhase::Compensated {
                continue;
            }
            let Some(def) = self.def.step(&step.name) else {
                let name = step.name.clone();
                self.step_def(&name);
                return Ok(true);
            };
            if Self::needs_compensation(step, def) {
                pending.push(step);
            }
        }
        // reverse order of start
        pending.sort_by_key(|s| std::cmp::Reverse(s.start_index));
        let Some(next) = pending.first() else {
            self.emit(SagaEvent::Compensated);
            return Ok(true);
        };
        if next.compensation != CompensationPhase::NotStarted {
            return Ok(false); // in flight, waiting for a retry, or parked
        }
        let name = next.name.clone();
        let Some(def) = self.step_def(&name) else {
            return Ok(true);
        };
        self.start_compensation(def, 1)?;
        Ok(true)
    }

    pub(super) fn start_compensation(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
    ) -> Result<(), SagaError> {
        let Some(work) = &step.compensation else {
            return Ok(());
        };
        self.emit(SagaEvent::StepCompensating {
            step: step.name.clone(),
            attempt,
        });
        match work {
            Work::Invoke(build) => match build(&self.data) {
                Ok(cmd) => self.send(
                    step,
                    attempt,
                    CommandKind::Compensation,
                    TimerKind::CompensationTimeout,
                    cmd,
                ),
                Err(error) => self.compensation_failed(
                    step,
                    attempt,
                    format!("the compensation command could not be built: {error}"),
                ),
            },
            Work::Local(run) => {
                let mut data = self.data.clone();
                match run(&mut data) {
                    Ok(()) => {
                        self.set_data(data)?;
                        self.emit(SagaEvent::StepCompensated {
                            step: step.name.clone(),
                            attempt,
                        });
                    }
                    Err(error) => self.compensation_failed(step, attempt, error.message),
                }
            }
        }
        Ok(())
    }

    pub(super) fn compensation_failed(&mut self, step: &StepDef<D>, attempt: u32, error: String) {
        self.emit(SagaEvent::CompensationFailed {
            step: step.name.clone(),
            attempt,
            error: error.clone(),
        });
        let round_start = self
            .step_state(&step.name)
            .map(|s| s.compensation_round_start)
            .unwrap_or(0);
        let tries = attempt.saturating_sub(round_start);
        if tries < step.compensation_retry.max_attempts {
            let after = step.compensation_retry.delay_after(tries);
            let due_at = due(self.now, after);
            self.emit(SagaEvent::CompensationRetryScheduled {
                step: step.name.clone(),
                attempt,
                due_at,
            });
            self.timer(&step.name, attempt, TimerKind::CompensationRetry, after);
        } else {
            tracing::warn!(saga_type = self.def.saga_type(), saga_id = %self.state.saga_id, step = %step.name, %error, "saga parked: compensation failed");
            self.emit(SagaEvent::Parked {
                step: step.name.clone(),
                error,
            });
        }
    }
}
