//! `balancer = "round-robin"`: each eligible endpoint in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, Pick, eligible};
use crate::upstream::Endpoint;

/// Each eligible endpoint in turn, ignoring weights.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, endpoints: &[Endpoint], pick: &Pick<'_>) -> Option<usize> {
        // Turn over the eligible endpoints only: handing an unavailable
        // endpoint's turn to its neighbour would give that neighbour double
        // load.
        let count = (0..endpoints.len()).filter(|&i| eligible(endpoints, i, pick)).count();
        if count == 0 {
            return None;
        }
        // A retry takes the next endpoint after the one that failed, without
        // a turn of its own: were it to take one, every request would use two
        // turns and, with two endpoints, always start on the same one.
        if let Some(&last) = pick.tried.last() {
            let n = endpoints.len();
            return (1..=n).map(|k| (last + k) % n).find(|&i| eligible(endpoints, i, pick));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (0..endpoints.len()).filter(|&i| eligible(endpoints, i, pick)).nth(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_support::endpoints;

    #[test]
    fn takes_turns_skipping_unavailable_and_tried() {
        let eps = endpoints(&[1, 1, 1]);
        eps[1].set_healthy(false);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&eps, &Pick::default()).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 0);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 3);
        assert_eq!(
            rr.pick(
                &eps,
                &Pick {
                    tried: &[0, 2],
                    key: None
                }
            ),
            None
        );
    }

    #[test]
    fn a_retry_does_not_take_a_turn() {
        let eps = endpoints(&[1, 1]);
        let rr = RoundRobin::default();
        let retry = Pick { tried: &[0], key: None };
        assert_eq!(rr.pick(&eps, &Pick::default()), Some(0));
        assert_eq!(rr.pick(&eps, &retry), Some(1));
        // The next request still gets its own turn: endpoint 1.
        assert_eq!(rr.pick(&eps, &Pick::default()), Some(1));
    }
}
