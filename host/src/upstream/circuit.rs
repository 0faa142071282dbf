//! The circuit breaker of one endpoint: closed → open after too many
//! failures → half-open probes → closed again. An open endpoint is skipped
//! like an unhealthy one, so a failing endpoint gets a rest instead of a
//! flood.

use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use crate::config::CircuitBreakerConfig;

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Circuit {
    config: CircuitBreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Counting outcomes in the current window.
    Closed {
        since: Instant,
        requests: u32,
        failures: u32,
    },
    /// Rejecting until `until`.
    Open { until: Instant },
    /// Letting `half_open_requests` probes through; one success closes.
    HalfOpen { probes: u32 },
}

/// What a breaker looks like from outside, for logs and admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Traffic flows.
    Closed,
    /// Traffic is refused.
    Open,
    /// A few probe requests are let through.
    HalfOpen,
}

impl Circuit {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed {
                since: Instant::now(),
                requests: 0,
                failures: 0,
            }),
        }
    }

    /// Whether the breaker lets a request through now. An open breaker whose
    /// rest is over turns half-open here.
    pub fn admits(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen { probes: 0 };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probes } => probes < self.config.half_open_requests,
        }
    }

    /// Counts a request sent through (a half-open breaker allows only a few).
    pub fn dispatched(&self) {
        if let State::HalfOpen { probes } = &mut *self.lock() {
            *probes += 1;
        }
    }

    /// Records an outcome; returns the new state when it changed.
    pub fn record(&self, success: bool) -> Option<CircuitState> {
        let c = &self.config;
        let now = Instant::now();
        let mut state = self.lock();
        let next = match *state {
            State::Closed {
                since,
                requests,
                failures,
            } => {
                let (since, requests, failures) = if now.duration_since(since) >= c.window.get() {
                    (now, 0, 0)
                } else {
                    (since, requests, failures)
                };
                let (requests, failures) = (requests + 1, failures + u32::from(!success));
                let tripped =
                    requests >= c.min_requests && f64::from(failures) / f64::from(requests) >= c.failure_ratio;
                if tripped {
                    State::Open {
                        until: now + c.open_for.get(),
                    }
                } else {
                    State::Closed {
                        since,
                        requests,
                        failures,
                    }
                }
            }
            State::HalfOpen { .. } if success => State::Closed {
                since: now,
                requests: 0,
                failures: 0,
            },
            State::HalfOpen { .. } => State::Open {
                until: now + c.open_for.get(),
            },
            // Outcomes of requests sent before the breaker opened.
            State::Open { until } => State::Open { until },
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&*state);
        *state = next;
        changed.then(|| Self::public(next))
    }

    /// The state now.
    pub fn state(&self) -> CircuitState {
        Self::public(*self.lock())
    }

    fn public(state: State) -> CircuitState {
        match state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a small value, valid after any partial update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as CfgDuration;
    use std::time::Duration;

    fn breaker() -> Circuit {
        Circuit::new(CircuitBreakerConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            window: CfgDuration::from_secs(10),
            open_for: CfgDuration::from_secs(5),
            half_open_requests: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_rests_half_opens_and_closes() {
        let c = breaker();
        for ok in [true, false, false] {
            assert_eq!(c.record(ok), None);
        }
        assert_eq!(
            c.record(false),
            Some(CircuitState::Open),
            "3 failures in 4 requests trips it"
        );
        assert!(!c.admits());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(c.admits(), "the rest is over: one probe may go");
        assert_eq!(c.state(), CircuitState::HalfOpen);
        c.dispatched();
        assert!(!c.admits(), "only one probe at a time");
        assert_eq!(c.record(true), Some(CircuitState::Closed));
        assert!(c.admits());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_and_quiet_windows_forget() {
        let c = breaker();
        for _ in 0..4 {
            c.record(false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(c.admits());
        c.dispatched();
        assert_eq!(c.record(false), Some(CircuitState::Open));
        assert!(!c.admits());

        let c = breaker();
        c.record(false);
        c.record(false);
        tokio::time::advance(Duration::from_secs(11)).await;
        // A new window: two old failures no longer count.
        c.record(true);
        c.record(true);
        c.record(false);
        assert_eq!(c.record(true), None);
        assert_eq!(c.state(), CircuitState::Closed);
    }
}
