//! Per-route rate limits: token buckets, one per route, client address or
//! header value, refilled continuously (`rate` per second, up to `burst`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use http::{HeaderMap, HeaderName};

use crate::config::RateLimit;

/// Keys tracked per shard at most; beyond it, buckets that have refilled
/// (and so say nothing a new bucket would not) are dropped first.
const MAX_KEYS_PER_SHARD: usize = 4096;
const SHARDS: usize = 16;

/// One route's limiter.
#[derive(Debug)]
pub(super) struct Limiter {
    rate: f64,
    burst: f64,
    by: By,
    shards: Vec<Mutex<HashMap<Vec<u8>, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug)]
enum By {
    Route,
    ClientIp,
    Header(HeaderName),
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// A limiter for a validated `rate_limit`.
    pub(super) fn new(config: &RateLimit) -> Self {
        let by = match config.by.as_str() {
            "client_ip" => By::ClientIp,
            h => match h
                .strip_prefix("header:")
                .and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            {
                Some(name) => By::Header(name),
                None => By::Route,
            },
        };
        Self {
            rate: config.rate,
            burst: f64::from(config.burst.unwrap_or_else(|| config.rate.ceil().max(1.0) as u32)),
            by,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Takes a token for this request, or says in how many seconds one
    /// will be back (for `Retry-After`).
    pub(super) fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), u64> {
        let key: Vec<u8> = match &self.by {
            By::Route => Vec::new(),
            By::ClientIp => match client {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            },
            By::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()).unwrap_or_default(),
        };
        let shard = self.hasher.hash_one(&key) as usize % SHARDS;
        let mut buckets = self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if buckets.len() >= MAX_KEYS_PER_SHARD && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let mut b = refill(*bucket, now, self.rate, self.burst);
        let outcome = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        };
        *bucket = b;
        outcome
    }
}

fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(burst),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32, by: &str) -> Limiter {
        Limiter::new(&RateLimit {
            rate,
            burst: Some(burst),
            by: by.to_owned(),
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = limiter(1.0, 3, "route");
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        assert!((0..3).all(|_| l.check(ip, &h).is_ok()));
        assert_eq!(l.check(ip, &h), Err(1));
    }

    #[test]
    fn per_client_and_per_header_buckets() {
        let l = limiter(0.5, 1, "client_ip");
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let h = HeaderMap::new();
        assert!(l.check(a, &h).is_ok());
        assert_eq!(l.check(a, &h), Err(2));
        assert!(l.check(b, &h).is_ok(), "another client has its own bucket");

        let l = limiter(1.0, 1, "header:x-api-key");
        let mut k1 = HeaderMap::new();
        k1.insert("x-api-key", "one".parse().unwrap());
        let mut k2 = HeaderMap::new();
        k2.insert("x-api-key", "two".parse().unwrap());
        assert!(l.check(a, &k1).is_ok());
        assert!(l.check(a, &k1).is_err());
        assert!(l.check(a, &k2).is_ok());
    }
}
