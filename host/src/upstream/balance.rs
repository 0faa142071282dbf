//! Load balancers: given the endpoints, which one takes the next request.
//! One policy per file, all behind [`Balance`]; every policy skips endpoints
//! that are unavailable (down, unhealthy, ejected) or already tried for this
//! request.

mod consistent_hash;
mod least_connections;
mod round_robin;
mod weighted;

use std::fmt::Debug;

use super::Endpoint;
use crate::config::Balancer;

pub use consistent_hash::ConsistentHash;
pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// What a balancer knows about the request it picks for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pick<'a> {
    /// Indexes already tried for this request (retries go elsewhere).
    pub tried: &'a [usize],
    /// The key consistent hashing routes by (client IP, header or cookie
    /// value); `None` when the request has none.
    pub key: Option<&'a [u8]>,
}

/// A load-balancing policy.
pub trait Balance: Send + Sync + Debug {
    /// The index in `endpoints` of the endpoint for the next request, or
    /// `None` when no endpoint is eligible (see [`eligible`]).
    fn pick(&self, endpoints: &[Endpoint], pick: &Pick<'_>) -> Option<usize>;
}

/// Whether endpoint `i` may take this request: available, and not tried yet.
pub fn eligible(endpoints: &[Endpoint], i: usize, pick: &Pick<'_>) -> bool {
    endpoints[i].is_available() && !pick.tried.contains(&i)
}

/// The built-in balancer for `config`. A plugin balancer gets round robin as
/// the fallback for when its failure is skipped.
pub(crate) fn build(config: &Balancer, endpoints: &[Endpoint]) -> Box<dyn Balance> {
    match config {
        Balancer::RoundRobin | Balancer::Plugin(_) => Box::new(RoundRobin::default()),
        Balancer::Weighted => Box::new(Weighted::new(endpoints)),
        Balancer::LeastConnections => Box::new(LeastConnections::default()),
        Balancer::IpHash | Balancer::HashHeader(_) | Balancer::HashCookie(_) => {
            Box::new(ConsistentHash::new(endpoints))
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Endpoints for balancer unit tests.

    use crate::config::TargetUrl;
    use crate::upstream::Endpoint;

    /// Endpoints on ports 1000, 1001, … with these weights, all available.
    pub(crate) fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let url = TargetUrl::parse(&format!("http://127.0.0.1:{}", 1000 + i)).expect("url");
                Endpoint::new(url, w, false)
            })
            .collect()
    }
}
