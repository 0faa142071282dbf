//! Active health checks: a background task per upstream probes every
//! endpoint, and flips it after enough consecutive results.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Upstream;
use crate::config::HealthConfig;

/// Probes the endpoints of `upstream` until it is dropped.
pub(crate) async fn run(
    upstream: Weak<Upstream>,
    config: HealthConfig,
    tls: Option<super::UpstreamTls>,
    protocol: crate::config::UpstreamProtocol,
) {
    // Probes use their own connections, never the traffic pool, so a probe
    // sees what a new connection would.
    let client = super::Pool::probe_client(config.timeout.get(), tls, protocol);
    let method = http::Method::from_bytes(config.method.as_bytes()).unwrap_or(http::Method::GET);
    // Keyed by endpoint, not position: the set of endpoints may change.
    let mut streaks: HashMap<Arc<str>, (bool, u32)> = HashMap::new();
    loop {
        let Some(up) = upstream.upgrade() else { return };
        let set = up.current();
        streaks.retain(|label, _| set.endpoints().iter().any(|e| e.label() == label));
        let probes = set.endpoints().iter().map(|e| {
            let uri = format!("{}{}", e.url, config.path);
            let req = http::Request::builder()
                .method(method.clone())
                .uri(uri)
                .header("user-agent", "plumeway-health");
            let client = client.clone();
            let timeout = config.timeout.get();
            async move {
                let Ok(req) = req.body(crate::body::full(bytes::Bytes::new())) else {
                    return false;
                };
                match tokio::time::timeout(timeout, client.request(req)).await {
                    Ok(Ok(resp)) => config.expected_status.contains(resp.status().as_u16()),
                    _ => false,
                }
            }
        });
        let results = futures_util::future::join_all(probes).await;
        for (endpoint, ok) in set.endpoints().iter().zip(results) {
            let first = !streaks.contains_key(endpoint.label());
            let streak = streaks.entry(Arc::clone(endpoint.label())).or_insert((true, 0));
            // A newcomer held back until its first probe is in as soon
            // as one passes (see `Upstream::set_targets`).
            if first && ok && endpoint.set_healthy(true) {
                tracing::info!(
                    upstream = &**up.name(),
                    endpoint = &**endpoint.label(),
                    "new endpoint healthy"
                );
                up.record_transition(endpoint, true);
                continue;
            }
            // A streak counts consecutive results that disagree with the
            // endpoint's current state; agreeing results reset it.
            if ok == endpoint.is_healthy() {
                *streak = (ok, 0);
                continue;
            }
            *streak = if streak.0 == ok { (ok, streak.1 + 1) } else { (ok, 1) };
            let needed = if ok { config.healthy } else { config.unhealthy };
            if streak.1 >= needed && endpoint.set_healthy(ok) {
                *streak = (ok, 0);
                up.record_transition(endpoint, ok);
                if ok {
                    tracing::info!(
                        upstream = &**up.name(),
                        endpoint = &**endpoint.label(),
                        "endpoint healthy again"
                    );
                } else {
                    tracing::warn!(
                        upstream = &**up.name(),
                        endpoint = &**endpoint.label(),
                        "endpoint unhealthy"
                    );
                }
            }
        }
        // Registered before the upstream is let go, so no change is missed.
        let changes = up.changes();
        let changed = changes.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let moved_meanwhile = !Arc::ptr_eq(&up.current(), &set);
        drop((up, set));
        if moved_meanwhile {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(jittered(config.interval.get())) => {}
            () = changed => {}
        }
    }
}

/// `interval` ± up to 10%, so that many proxies (or upstreams) do not probe
/// in lockstep.
fn jittered(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(std::time::Instant::now()) % 2001;
    let factor = 0.9 + (r as f64) / 10_000.0;
    interval.mul_f64(factor)
}
