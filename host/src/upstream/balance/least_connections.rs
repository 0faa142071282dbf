//! `balancer = "least-connections"`: the endpoint with the fewest requests in
//! flight relative to its weight.
//!
//! Counting requests in flight adapts to slow endpoints, which round robin
//! keeps feeding. Ties are broken at random rather than by order: under light
//! load most picks are ties (everyone at 0), and always taking the first
//! would send it nearly all the traffic.

use std::cmp::Ordering as Cmp;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{Balance, Pick, eligible};
use crate::upstream::Endpoint;

/// The eligible endpoint with the lowest `in_flight / weight`; ties broken
/// uniformly at random.
#[derive(Debug)]
pub struct LeastConnections {
    /// State of a splitmix64 generator shared by all picks. Each pick
    /// advances it with one `fetch_add`, so concurrent picks never draw the
    /// same number and never wait on each other.
    rng: AtomicU64,
}

impl Default for LeastConnections {
    /// Seeded from the process's random hash keys and the clock, so separate
    /// proxies (and separate upstreams) do not break ties in lockstep.
    fn default() -> Self {
        Self {
            rng: AtomicU64::new(RandomState::new().hash_one(Instant::now())),
        }
    }
}

/// splitmix64's increment (2^64 / φ, odd).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function: a bijection with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A splitmix64 generator local to one pick, forked from the shared one so a
/// pick with many ties touches the shared atomic only once.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// A number in `0..n` (`n > 0`), by multiply-and-shift; the bias is at
    /// most `n / 2^64`, nothing at endpoint counts.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

impl LeastConnections {
    /// A local generator whose seed is a fresh output of the shared one
    /// (mixed, so two concurrent picks' sequences do not overlap).
    fn fork(&self) -> SplitMix {
        let state = self.rng.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA);
        SplitMix(mix(state))
    }
}

impl Balance for LeastConnections {
    fn pick(&self, endpoints: &[Endpoint], pick: &Pick<'_>) -> Option<usize> {
        // One pass, reading each in-flight count once (they change under
        // us); among equal minimums, reservoir sampling keeps the k-th tie
        // with probability 1/k, which makes the final choice uniform.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut ties: u64 = 0;
        let mut rng: Option<SplitMix> = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            if !eligible(endpoints, i, pick) {
                continue;
            }
            let load = u64::from(endpoint.in_flight());
            // The config rejects weight 0; count it as 1 rather than divide
            // by it.
            let weight = u64::from(endpoint.weight.max(1));
            let Some((_, best_load, best_weight)) = best else {
                best = Some((i, load, weight));
                ties = 1;
                continue;
            };
            // load / weight against best_load / best_weight, cross-multiplied
            // to stay exact: both products fit in u64 (u32 × u32).
            match (load * best_weight).cmp(&(best_load * weight)) {
                Cmp::Less => {
                    best = Some((i, load, weight));
                    ties = 1;
                }
                Cmp::Equal => {
                    ties += 1;
                    if rng.get_or_insert_with(|| self.fork()).below(ties) == 0 {
                        best = Some((i, load, weight));
                    }
                }
                Cmp::Greater => {}
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_support::endpoints;

    #[test]
    fn picks_fewest_in_flight() {
        let eps = endpoints(&[1, 1]);
        let _busy: Vec<_> = (0..3).map(|_| eps[0].begin()).collect();
        let lc = LeastConnections::default();
        for _ in 0..100 {
            assert_eq!(lc.pick(&eps, &Pick::default()), Some(1));
        }
    }

    #[test]
    fn weighs_in_flight_by_weight() {
        // 2 in flight over weight 3 is less loaded than 1 over weight 1.
        let eps = endpoints(&[1, 3]);
        let _a = eps[0].begin();
        let _b: Vec<_> = (0..2).map(|_| eps[1].begin()).collect();
        let lc = LeastConnections::default();
        for _ in 0..100 {
            assert_eq!(lc.pick(&eps, &Pick::default()), Some(1));
        }
    }

    #[test]
    fn guards_release_their_count() {
        let eps = endpoints(&[1, 1]);
        let lc = LeastConnections::default();
        {
            let _busy = eps[0].begin();
            assert_eq!(lc.pick(&eps, &Pick::default()), Some(1));
        }
        let _busy = eps[1].begin();
        assert_eq!(lc.pick(&eps, &Pick::default()), Some(0));
    }

    #[test]
    fn spreads_ties_at_random() {
        let eps = endpoints(&[1, 1]);
        let lc = LeastConnections::default();
        let mut counts = [0; 2];
        for _ in 0..1_000 {
            counts[lc.pick(&eps, &Pick::default()).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c >= 300), "{counts:?}");

        // Three-way ties (equal ratios with different weights) too.
        let eps = endpoints(&[1, 2, 1]);
        let _a = eps[0].begin();
        let _b: Vec<_> = (0..2).map(|_| eps[1].begin()).collect();
        let _c = eps[2].begin();
        let mut counts = [0; 3];
        for _ in 0..3_000 {
            counts[lc.pick(&eps, &Pick::default()).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c >= 800), "{counts:?}");
    }

    #[test]
    fn skips_unavailable_and_tried() {
        let eps = endpoints(&[1, 1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| eps[2].begin()).collect();
        eps[0].set_healthy(false);
        let lc = LeastConnections::default();
        for _ in 0..100 {
            // The idle endpoints are out, so the busy one is all that is left.
            assert_eq!(lc.pick(&eps, &Pick { tried: &[1], key: None }), Some(2));
        }
        assert_eq!(
            lc.pick(
                &eps,
                &Pick {
                    tried: &[1, 2],
                    key: None
                }
            ),
            None
        );
        assert_eq!(lc.pick(&[], &Pick::default()), None);
    }
}
