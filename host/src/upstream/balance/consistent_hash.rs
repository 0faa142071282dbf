//! `balancer = "ip-hash"`, `{ hash_header = "…" }`, `{ hash_cookie = "…" }`:
//! consistent hashing on a ring with virtual nodes.
//!
//! The same key (client address, header or cookie value; the caller puts it
//! in [`Pick::key`]) goes to the same endpoint, for caches and sessions that
//! live on one endpoint. A ring rather than `hash % n` so that changes move
//! as few keys as possible: a new endpoint takes only its own share of keys,
//! and an endpoint that goes out hands only its keys to its successors while
//! every other key stays put.
//!
//! Ring points come from a hash written here (FNV-1a with a splitmix64
//! finaliser) rather than std's `DefaultHasher`, whose output may change
//! between Rust versions: a rebuilt proxy must map keys as before.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, Pick, eligible};
use crate::upstream::Endpoint;

/// Ring points per unit of weight: as in nginx and ketama, enough that each
/// endpoint's share lands within a few percent of its weight.
const POINTS_PER_WEIGHT: u32 = 160;

/// Weights above this get this many units of points, keeping the ring (16
/// bytes a point) at most 256 KiB per endpoint. Shares stay proportional up
/// to it.
const MAX_RING_WEIGHT: u32 = 100;

/// Routes each key to an endpoint on a hash ring; keyless requests rotate
/// over the ring.
pub struct ConsistentHash {
    /// Points sorted by hash (then endpoint index, for a total order).
    ring: Vec<Point>,
    /// Where the next keyless request starts on the ring.
    next: AtomicUsize,
}

/// One virtual node: a position on the ring owned by an endpoint.
#[derive(Debug, Clone, Copy)]
struct Point {
    hash: u64,
    endpoint: usize,
}

impl ConsistentHash {
    /// The ring for `endpoints`: `160 × weight` points each (weight capped
    /// at 100), placed by hashing the endpoint's URL and the point's number.
    /// Points depend on the URL only, not on the endpoint's position in the
    /// list, so an endpoint's keys survive other endpoints being added.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        // The same URL listed twice would give both copies the same points,
        // and the first would win every key; numbering the copies gives each
        // its own.
        let mut copies: HashMap<&str, u32> = HashMap::new();
        let mut ring = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let label: &str = endpoint.label();
            let copy = copies.entry(label).or_insert(0);
            let nth = *copy;
            *copy += 1;
            let points = POINTS_PER_WEIGHT * endpoint.weight.clamp(1, MAX_RING_WEIGHT);
            ring.extend((0..points).map(|replica| Point {
                hash: hash(&[label.as_bytes(), &[0], &nth.to_le_bytes(), &replica.to_le_bytes()]),
                endpoint: i,
            }));
        }
        ring.sort_unstable_by_key(|p| (p.hash, p.endpoint));
        Self {
            ring,
            next: AtomicUsize::new(0),
        }
    }
}

impl fmt::Debug for ConsistentHash {
    // Thousands of points are no use in a log line; their number is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistentHash")
            .field("points", &self.ring.len())
            .finish_non_exhaustive()
    }
}

/// FNV-1a (64-bit) over the concatenated `parts`, then splitmix64's
/// finaliser: FNV alone leaves short, similar keys (addresses, small
/// numbers) clustered in the high bits that decide ring order.
fn hash(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &byte in parts.iter().flat_map(|part| part.iter()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Balance for ConsistentHash {
    fn pick(&self, endpoints: &[Endpoint], pick: &Pick<'_>) -> Option<usize> {
        // Checked first so the walk below always ends at an eligible
        // endpoint instead of circling the whole ring for nothing.
        if self.ring.is_empty() || !(0..endpoints.len()).any(|i| eligible(endpoints, i, pick)) {
            return None;
        }
        let start = match pick.key {
            // The first point at or after the key's hash; past the last
            // point the ring wraps to the first.
            Some(key) => {
                let h = hash(&[key]);
                self.ring.partition_point(|p| p.hash < h)
            }
            // Without a key, successive requests start at successive points,
            // which spreads them like keys would (by weight).
            None => self.next.fetch_add(1, Ordering::Relaxed),
        } % self.ring.len();
        // Clockwise to the first eligible endpoint: an endpoint that is out
        // (or already tried) hands its keys to the next one on the ring.
        self.ring[start..]
            .iter()
            .chain(&self.ring[..start])
            .map(|p| p.endpoint)
            .find(|&i| i < endpoints.len() && eligible(endpoints, i, pick))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_support::endpoints;

    const KEYS: usize = 10_000;

    fn key(i: usize) -> Vec<u8> {
        format!("client-{i}").into_bytes()
    }

    /// The endpoint for each of the test keys.
    fn map(ch: &ConsistentHash, eps: &[Endpoint]) -> Vec<usize> {
        (0..KEYS)
            .map(|i| {
                ch.pick(
                    eps,
                    &Pick {
                        tried: &[],
                        key: Some(&key(i)),
                    },
                )
                .unwrap()
            })
            .collect()
    }

    fn shares(mapping: &[usize], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &i in mapping {
            counts[i] += 1;
        }
        counts.into_iter().map(|c| c as f64 / mapping.len() as f64).collect()
    }

    #[test]
    fn same_key_same_endpoint() {
        let eps = endpoints(&[1, 1, 1]);
        let ch = ConsistentHash::new(&eps);
        let first = map(&ch, &eps);
        assert_eq!(map(&ch, &eps), first);
        // A ring rebuilt from the same endpoints (a config reload) agrees.
        assert_eq!(map(&ConsistentHash::new(&eps), &eps), first);
    }

    #[test]
    fn spreads_keys_evenly() {
        let eps = endpoints(&[1, 1, 1]);
        let ch = ConsistentHash::new(&eps);
        for (i, share) in shares(&map(&ch, &eps), 3).into_iter().enumerate() {
            assert!((0.25..=0.42).contains(&share), "endpoint {i}: share {share}");
        }
    }

    #[test]
    fn shares_follow_weights() {
        let eps = endpoints(&[1, 3]);
        let ch = ConsistentHash::new(&eps);
        let share = shares(&map(&ch, &eps), 2)[1];
        assert!((0.65..=0.85).contains(&share), "share {share}");
    }

    #[test]
    fn adding_an_endpoint_moves_only_keys_to_it() {
        let three = endpoints(&[1, 1, 1]);
        let four = endpoints(&[1, 1, 1, 1]);
        let before = map(&ConsistentHash::new(&three), &three);
        let after = map(&ConsistentHash::new(&four), &four);
        let moved = after.iter().filter(|&&i| i == 3).count();
        let kept = before.iter().zip(&after).filter(|&(b, a)| *a != 3 && a == b).count();
        assert!(kept * 100 >= (KEYS - moved) * 99, "kept {kept} of {}", KEYS - moved);
        assert_eq!(kept, KEYS - moved);
        let share = moved as f64 / KEYS as f64;
        assert!((0.15..=0.35).contains(&share), "moved share {share}");
    }

    #[test]
    fn unavailable_endpoint_hands_over_only_its_keys() {
        let eps = endpoints(&[1, 1, 1]);
        let ch = ConsistentHash::new(&eps);
        let before = map(&ch, &eps);
        eps[1].set_healthy(false);
        let after = map(&ch, &eps);
        for (b, a) in before.iter().zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1);
            } else {
                assert_eq!(a, b);
            }
        }
        // Both survivors take some of its keys, not just one neighbour.
        let moved: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|&(b, _)| *b == 1)
            .map(|(_, a)| *a)
            .collect();
        assert!(moved.contains(&0) && moved.contains(&2));
        // Back in health, it gets its keys back.
        eps[1].set_healthy(true);
        assert_eq!(map(&ch, &eps), before);
    }

    #[test]
    fn tried_endpoint_falls_to_successor() {
        let eps = endpoints(&[1, 1, 1]);
        let ch = ConsistentHash::new(&eps);
        for i in 0..100 {
            let k = key(i);
            let first = ch
                .pick(
                    &eps,
                    &Pick {
                        tried: &[],
                        key: Some(&k),
                    },
                )
                .unwrap();
            let retry = ch
                .pick(
                    &eps,
                    &Pick {
                        tried: &[first],
                        key: Some(&k),
                    },
                )
                .unwrap();
            assert_ne!(retry, first);
            // The retry is stable too.
            assert_eq!(
                ch.pick(
                    &eps,
                    &Pick {
                        tried: &[first],
                        key: Some(&k)
                    }
                ),
                Some(retry)
            );
            assert_eq!(
                ch.pick(
                    &eps,
                    &Pick {
                        tried: &[0, 1, 2],
                        key: Some(&k)
                    }
                ),
                None
            );
        }
    }

    #[test]
    fn keyless_requests_spread() {
        let eps = endpoints(&[1, 1, 1]);
        let ch = ConsistentHash::new(&eps);
        let mapping: Vec<_> = (0..3_000).map(|_| ch.pick(&eps, &Pick::default()).unwrap()).collect();
        for (i, share) in shares(&mapping, 3).into_iter().enumerate() {
            assert!((0.2..=0.47).contains(&share), "endpoint {i}: share {share}");
        }
        eps[0].set_healthy(false);
        for _ in 0..100 {
            assert_ne!(ch.pick(&eps, &Pick::default()), Some(0));
        }
    }

    #[test]
    fn duplicate_urls_each_get_keys() {
        let mut eps = endpoints(&[1, 1]);
        eps.extend(endpoints(&[1]));
        let ch = ConsistentHash::new(&eps);
        let shares = shares(&map(&ch, &eps), 3);
        assert!(shares.iter().all(|&s| s > 0.2), "{shares:?}");
    }

    #[test]
    fn nothing_eligible_is_none() {
        assert_eq!(ConsistentHash::new(&[]).pick(&[], &Pick::default()), None);
        let eps = endpoints(&[1, 1]);
        let ch = ConsistentHash::new(&eps);
        eps[0].set_healthy(false);
        eps[1].set_healthy(false);
        assert_eq!(
            ch.pick(
                &eps,
                &Pick {
                    tried: &[],
                    key: Some(b"k")
                }
            ),
            None
        );
        assert_eq!(ch.pick(&eps, &Pick::default()), None);
    }
}
