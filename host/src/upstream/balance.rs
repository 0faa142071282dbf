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
        // Turn over the available endpoints only: handing a down endpoint's
        // turn to its neighbour would give that neighbour double load.
        let available = endpoints.iter().filter(|e| e.is_available()).count();
        if available == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % available;
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_available())
            .nth(turn)
            .map(|(i, _)| i)
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
        Upstream::new("u", u, None).endpoints
    }

    #[test]
    fn takes_turns_and_skips_down_endpoints() {
        let eps = endpoints(&[false, true, false]);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&eps).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 0);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 3);
        assert_eq!(rr.pick(&endpoints(&[true, true])), None);
    }
}
