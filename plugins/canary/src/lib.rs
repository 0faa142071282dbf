//! `builtin = "canary"`, for `balancer = { plugin = "NAME" }`: sends a share
//! of requests to canary endpoints.
//!
//! ```toml
//! config = { header = "x-canary", percent = 10, canary = 1 }
//! ```
//! The last `canary` endpoints of the upstream are the canaries. A request
//! with `x-canary: always` goes to a canary, `x-canary: never` to a stable
//! endpoint; the others go to a canary `percent` times in a hundred. Within
//! a group endpoints take turns; an unhealthy or already tried endpoint is
//! skipped, and an empty group falls back to the other one.

use std::cell::Cell;

use plumeway_sdk::{Balancer, Config, Endpoint, Error, PickContext, Plugin, Request, serde};

/// The plugin.
#[derive(Debug)]
pub struct Canary {
    header: String,
    percent: u32,
    canary: usize,
    requests: Cell<u64>,
    turn: Cell<usize>,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
    percent: u32,
    #[serde(default = "one")]
    canary: usize,
}

fn default_header() -> String {
    "x-canary".into()
}

fn one() -> usize {
    1
}

impl Plugin for Canary {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.percent > 100 {
            return Err(format!("percent must be 0 to 100, got {}", s.percent));
        }
        if s.canary == 0 {
            return Err("canary must be at least 1 (the number of canary endpoints at the end of the list)".into());
        }
        Ok(Self {
            header: s.header,
            percent: s.percent,
            canary: s.canary,
            requests: Cell::new(0),
            turn: Cell::new(0),
        })
    }
}

impl Canary {
    fn wants_canary(&self, req: &Request<'_>) -> bool {
        match req.headers().get(&self.header).as_deref().map(str::trim) {
            Some("always" | "true" | "1") => true,
            Some("never" | "false" | "0") => false,
            _ => {
                // A counter rather than randomness: exact shares, and the
                // same sequence every run, which tests can rely on.
                let n = self.requests.get();
                self.requests.set(n.wrapping_add(1));
                n % 100 < u64::from(self.percent)
            }
        }
    }

    fn pick_in(&self, group: &[Endpoint], ctx: &PickContext) -> Option<usize> {
        let usable: Vec<&Endpoint> = group
            .iter()
            .filter(|e| e.healthy && !ctx.tried.contains(&e.index))
            .collect();
        if usable.is_empty() {
            return None;
        }
        let t = self.turn.get();
        self.turn.set(t.wrapping_add(1));
        Some(usable[t % usable.len()].index)
    }
}

impl Balancer for Canary {
    fn pick(&self, req: &Request<'_>, endpoints: &[Endpoint], ctx: &PickContext) -> Result<Option<usize>, Error> {
        let split = endpoints.len().saturating_sub(self.canary);
        let (stable, canary) = endpoints.split_at(split);
        let (first, second) = if self.wants_canary(req) {
            (canary, stable)
        } else {
            (stable, canary)
        };
        Ok(self.pick_in(first, ctx).or_else(|| self.pick_in(second, ctx)))
    }
}

plumeway_sdk::export!(Canary: Balancer);

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Vec<Endpoint> {
        (0..3).map(|i| Endpoint::new(i, 1, true, 0)).collect()
    }

    fn canary(percent: u32) -> Canary {
        Canary::init(Config::from_json(format!(r#"{{"percent":{percent}}}"#))).unwrap()
    }

    #[test]
    fn sends_the_configured_share_to_the_last_endpoint() {
        let c = canary(10);
        let req = Request::builder("GET", "/").build();
        let picks: Vec<usize> = (0..100)
            .map(|_| c.pick(&req, &endpoints(), &PickContext::default()).unwrap().unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 10);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 45);
    }

    #[test]
    fn header_forces_a_group_and_unhealthy_canary_falls_back() {
        let c = canary(0);
        let always = Request::builder("GET", "/").header("x-canary", "always").build();
        assert_eq!(c.pick(&always, &endpoints(), &PickContext::default()).unwrap(), Some(2));
        let mut eps = endpoints();
        eps[2].healthy = false;
        let picked = c.pick(&always, &eps, &PickContext::default()).unwrap();
        assert!(matches!(picked, Some(0 | 1)), "{picked:?}");
    }
}
