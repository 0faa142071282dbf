//! Load balancers: given the endpoints, which one takes the next request.

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Endpoint;

/// A load-balancing policy.
pub trait Balance: Send + Sync + Debug {
    /// The index in `endpoints` of the endpoint for the next request, or
    /// `None` when none is available. Unavailable endpoints are never picked.
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize>;
}

/// Each available endpoint in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Scan from the turn's position so an unavailable endpoint hands its
        // turn to the next one instead of failing the request.
        (0..n).map(|k| (start + k) % n).find(|&i| endpoints[i].is_available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UpstreamConfig};
    use crate::upstream::Upstream;
    use std::path::Path;

    fn endpoints(down: &[bool]) -> Vec<Endpoint> {
        let targets: Vec<String> = down
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{{ url = \"http://127.0.0.1:{}\", down = {d} }}", 1000 + i))
            .collect();
        let toml = format!(
            "[upstreams.u]\ntargets = [{}]\n[[routes]]\nupstream = \"u\"\n",
            targets.join(", ")
        );
        let config = Config::parse(Path::new("t.toml"), &toml).unwrap();
        let u: &UpstreamConfig = &config.upstreams["u"];
        Upstream::new("u", u).endpoints
    }

    #[test]
    fn takes_turns_and_skips_down_endpoints() {
        let eps = endpoints(&[false, true, false]);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&eps).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 0);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(rr.pick(&endpoints(&[true, true])), None);
    }
}
