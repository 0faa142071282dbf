//! `discovery = { dns = { ... } }`: instances from DNS A or SRV records,
//! re-resolved when their TTL runs out. This is how Kubernetes headless
//! services and Consul's DNS interface are reached.

use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::time::Instant;

use crate::config::{DnsDiscovery, DnsRecord, Target, TargetUrl};
use crate::upstream::Upstream;

/// Re-resolve at least this often and at most this rarely, whatever the TTL.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// Backoff after failed lookups, doubling up to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Starts resolving. A lookup that fails now is not a config error: the
/// upstream answers 503 until DNS answers, rather than the proxy refusing
/// to start because a DNS server blinked.
pub(super) async fn start(upstream: &Arc<Upstream>, config: &DnsDiscovery) -> Result<(), String> {
    let resolver = resolver(config)?;
    let first = resolve(&resolver, config).await;
    let mut last_good = None;
    match &first {
        Ok((targets, _)) if !targets.is_empty() => {
            upstream.set_targets(targets);
            last_good = Some(Instant::now());
        }
        Ok(_) => tracing::warn!(upstream = &**upstream.name(), name = %config.name, "DNS lists no instance yet"),
        Err(err) => tracing::warn!(upstream = &**upstream.name(), error = %err, "DNS lookup failed; retrying"),
    }
    tokio::spawn(follow(
        Arc::downgrade(upstream),
        resolver,
        config.clone(),
        first.ok(),
        last_good,
    ));
    Ok(())
}

async fn follow(
    upstream: Weak<Upstream>,
    resolver: TokioResolver,
    config: DnsDiscovery,
    first: Option<(Vec<Target>, Duration)>,
    mut last_good: Option<Instant>,
) {
    let mut current = first.as_ref().map(|(t, _)| t.clone()).unwrap_or_default();
    let mut wait = first.map_or(FIRST_RETRY, |(_, ttl)| ttl);
    let mut retry = FIRST_RETRY;
    loop {
        tokio::time::sleep(wait).await;
        let Some(up) = upstream.upgrade() else { return };
        match resolve(&resolver, &config).await {
            Ok((targets, ttl)) if !targets.is_empty() => {
                if targets != current {
                    up.set_targets(&targets);
                    current = targets;
                }
                last_good = Some(Instant::now());
                retry = FIRST_RETRY;
                wait = ttl;
            }
            outcome => {
                let reason = match outcome {
                    Err(e) => e,
                    Ok(_) => "no instances".to_owned(),
                };
                let expired = last_good.is_none_or(|t| t.elapsed() >= config.hold.get());
                if expired && !current.is_empty() {
                    tracing::warn!(upstream = &**up.name(), %reason, "DNS still failing after the hold period: dropping the last good set");
                    up.set_targets(&[]);
                    current.clear();
                } else {
                    tracing::warn!(upstream = &**up.name(), %reason, "DNS lookup failed; keeping the last good set");
                }
                wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

fn resolver(config: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut opts = ResolverOpts::default();
    // Every refresh asks the server: the loop already waits for the TTL.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    let builder = match config.server {
        Some(addr) => {
            let mut rc = ResolverConfig::new();
            rc.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            Resolver::builder_with_config(rc, TokioConnectionProvider::default())
        }
        None => Resolver::builder_tokio().map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    Ok(builder.with_options(opts).build())
}

/// The instances and how long they may be trusted.
async fn resolve(resolver: &TokioResolver, config: &DnsDiscovery) -> Result<(Vec<Target>, Duration), String> {
    let name = config.name.as_str();
    let (mut targets, valid_until) = match config.record {
        DnsRecord::A => {
            let port = config.port.unwrap_or(80);
            let lookup = resolver.ipv4_lookup(name).await.map_err(|e| format!("{name}: {e}"))?;
            let targets = lookup
                .iter()
                .map(|a| target(&format!("http://{}:{port}", a.0), 1))
                .collect::<Result<Vec<_>, _>>()?;
            (targets, lookup.as_lookup().valid_until())
        }
        DnsRecord::Srv => {
            let lookup = resolver.srv_lookup(name).await.map_err(|e| format!("{name}: {e}"))?;
            let mut targets = Vec::new();
            for srv in lookup.iter() {
                let host = srv.target().to_utf8();
                let addrs = resolver
                    .ipv4_lookup(host.as_str())
                    .await
                    .map_err(|e| format!("{host}: {e}"))?;
                for a in addrs.iter() {
                    targets.push(target(
                        &format!("http://{}:{}", a.0, srv.port()),
                        u32::from(srv.weight()).max(1),
                    )?);
                }
            }
            (targets, lookup.as_lookup().valid_until())
        }
    };
    // A stable order, so that an unchanged answer in another order is no change.
    targets.sort_by_key(|t| t.url.to_string());
    targets.dedup_by(|a, b| a.url == b.url);
    let ttl = valid_until
        .saturating_duration_since(std::time::Instant::now())
        .clamp(MIN_REFRESH, MAX_REFRESH);
    Ok((targets, ttl))
}

fn target(url: &str, weight: u32) -> Result<Target, String> {
    Ok(Target {
        url: TargetUrl::parse(url)?,
        weight,
        down: false,
    })
}
