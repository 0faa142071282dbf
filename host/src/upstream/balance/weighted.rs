//! `balancer = "weighted"`: nginx's smooth weighted round robin.
//!
//! Plain weighted round robin (take endpoint `a` five times, then `b`, then
//! `c`) sends bursts to the heaviest endpoint. The smooth variant spreads
//! each endpoint's turns over the cycle instead: with weights 5, 1, 1 the
//! order is a a b a c a a, so no endpoint ever gets a run longer than its
//! share demands.

use std::sync::{Mutex, PoisonError};

use super::{Balance, Pick, eligible};
use crate::upstream::Endpoint;

/// Shares traffic by weight, interleaving the turns (nginx's smooth
/// weighted round robin).
///
/// Each endpoint has a current weight. On each pick every eligible
/// endpoint's configured weight is added to its current weight; the eligible
/// endpoint with the highest current weight (the first on ties) is picked
/// and the total of the eligible weights is subtracted from it. Endpoints
/// that are not eligible keep their current weight untouched, so the others
/// keep their relative shares while one is out.
#[derive(Debug)]
pub struct Weighted {
    /// Current weight per endpoint, in config order. A mutex rather than
    /// atomics: a pick reads and updates every slot together, and the
    /// critical section is a few additions.
    current: Mutex<Vec<i64>>,
}

impl Weighted {
    /// A balancer for `endpoints`, whose list must keep its length for the
    /// balancer's life (an upstream's endpoints are fixed when it is built).
    pub fn new(endpoints: &[Endpoint]) -> Self {
        Self {
            current: Mutex::new(vec![0; endpoints.len()]),
        }
    }
}

/// An endpoint's weight for balancing. The config rejects 0, but an endpoint
/// built by hand could carry it; counting it as 1 keeps such an endpoint in
/// rotation rather than letting it sit at the front on every tie.
fn weight(endpoint: &Endpoint) -> i64 {
    i64::from(endpoint.weight.max(1))
}

impl Balance for Weighted {
    fn pick(&self, endpoints: &[Endpoint], pick: &Pick<'_>) -> Option<usize> {
        // The state is plain numbers, valid after any partial update, so a
        // panic elsewhere while holding the lock leaves nothing to repair.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.len() != endpoints.len() {
            // Not expected (see `new`); resizing beats indexing out of
            // bounds, and only costs the smoothness of one cycle.
            current.resize(endpoints.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            if !eligible(endpoints, i, pick) {
                continue;
            }
            let w = weight(endpoint);
            current[i] = current[i].saturating_add(w);
            total = total.saturating_add(w);
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] = current[best].saturating_sub(total);
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_support::endpoints;

    fn counts(balancer: &Weighted, eps: &[Endpoint], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; eps.len()];
        for _ in 0..picks {
            counts[balancer.pick(eps, &Pick::default()).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn follows_nginx_smooth_sequence() {
        // nginx's documented example: weights { a: 5, b: 1, c: 1 } give
        // a a b a c a a.
        let eps = endpoints(&[5, 1, 1]);
        let w = Weighted::new(&eps);
        let picks: Vec<_> = (0..7).map(|_| w.pick(&eps, &Pick::default()).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        // And the cycle repeats.
        let again: Vec<_> = (0..7).map(|_| w.pick(&eps, &Pick::default()).unwrap()).collect();
        assert_eq!(again, picks);
    }

    #[test]
    fn shares_follow_weights() {
        let eps = endpoints(&[1, 2, 7]);
        let w = Weighted::new(&eps);
        let counts = counts(&w, &eps, 10_000);
        for (i, weight) in [1.0, 2.0, 7.0].into_iter().enumerate() {
            let expected = 10_000.0 * weight / 10.0;
            let got = counts[i] as f64;
            assert!(
                (got - expected).abs() <= expected * 0.05,
                "endpoint {i}: {got} picks, expected ~{expected}"
            );
        }
    }

    #[test]
    fn unhealthy_gets_nothing_and_others_keep_their_shares() {
        let eps = endpoints(&[1, 2, 7]);
        eps[2].set_healthy(false);
        let w = Weighted::new(&eps);
        let counts = counts(&w, &eps, 3_000);
        assert_eq!(counts, [1_000, 2_000, 0]);
    }

    #[test]
    fn skips_tried_and_returns_none_when_nothing_is_eligible() {
        let eps = endpoints(&[5, 1, 1]);
        let w = Weighted::new(&eps);
        for _ in 0..20 {
            let i = w.pick(&eps, &Pick { tried: &[0], key: None }).unwrap();
            assert_ne!(i, 0);
        }
        assert_eq!(
            w.pick(
                &eps,
                &Pick {
                    tried: &[0, 1, 2],
                    key: None
                }
            ),
            None
        );
        eps[1].set_healthy(false);
        assert_eq!(
            w.pick(
                &eps,
                &Pick {
                    tried: &[0, 2],
                    key: None
                }
            ),
            None
        );
        assert_eq!(Weighted::new(&[]).pick(&[], &Pick::default()), None);
    }
}
