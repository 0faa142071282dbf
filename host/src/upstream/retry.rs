//! The retry budget: retries may be at most a share of requests, so that
//! retrying cannot multiply the load on an upstream that is already failing.

use std::sync::atomic::{AtomicI64, Ordering};

/// A token bucket in hundredths of a retry: each request deposits
/// `percent`, each retry takes 100. A small reserve lets a quiet upstream
/// retry at all; a cap stops a long calm spell from saving up a storm.
#[derive(Debug)]
pub struct RetryBudget {
    percent: i64,
    tokens: AtomicI64,
}

/// Retries always allowed in a row, whatever the traffic (hundredths).
const RESERVE: i64 = 3 * 100;
/// The most retries that can be saved up (hundredths).
const CAP: i64 = 10 * 100;

impl RetryBudget {
    /// A budget of `percent` retries per hundred requests.
    pub fn new(percent: u32) -> Self {
        Self {
            percent: i64::from(percent),
            tokens: AtomicI64::new(RESERVE),
        }
    }

    /// Counts a request.
    pub fn deposit(&self) {
        let _ = self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some((t + self.percent).min(CAP))
        });
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t >= 100).then_some(t - 100))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_of_requests() {
        let budget = RetryBudget::new(20);
        // The reserve first: three retries with no traffic.
        assert!((0..3).all(|_| budget.try_retry()));
        assert!(!budget.try_retry());
        // Then one retry per five requests.
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.try_retry() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }
}
