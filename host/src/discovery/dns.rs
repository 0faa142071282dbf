//! `discovery = { dns = { ... } }`: instances from DNS A or SRV records,
//! re-resolved when their TTL runs out. This is how Kubernetes headless
//! services and Consul's DNS interface are reached.

use std::time::Duration;

use super::{Discovery, Error, canonical};
use crate::config::{DnsDiscovery, DnsRecord, Target};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Resolver, TokioResolver};

/// Re-resolve at least this often and at most this rarely, whatever the TTL.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);

/// The `dns` back end: A or SRV records, cached for their TTL.
pub struct Dns {
    resolver: TokioResolver,
    config: DnsDiscovery,
    /// How long the last answer may be trusted; zero after a failure,
    /// since the driver has already backed off by then.
    ttl: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("config", &self.config)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// A back end for `config`; fails only when the system's resolver
    /// configuration cannot be read.
    pub fn new(config: &DnsDiscovery) -> Result<Self, Error> {
        Ok(Self {
            resolver: resolver(config)?,
            config: config.clone(),
            ttl: Duration::ZERO,
        })
    }
}

impl Discovery for Dns {
    const KIND: &'static str = "dns";

    async fn resolve(&mut self) -> Result<Vec<Target>, Error> {
        match resolve(&self.resolver, &self.config).await {
            Ok((targets, _)) if targets.is_empty() => {
                self.ttl = Duration::ZERO;
                Err(Error::Failed(format!("{} has no records", self.config.name)))
            }
            Ok((targets, ttl)) => {
                self.ttl = ttl;
                Ok(targets)
            }
            Err(err) => {
                self.ttl = Duration::ZERO;
                Err(Error::Failed(err))
            }
        }
    }

    async fn watch(&mut self) -> Result<Vec<Target>, Error> {
        tokio::time::sleep(self.ttl).await;
        self.resolve().await
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
    let (targets, valid_until) = match config.record {
        DnsRecord::A => {
            let port = config.port.unwrap_or(80);
            let lookup = resolver.ipv4_lookup(name).await.map_err(|e| format!("{name}: {e}"))?;
            let targets = lookup
                .iter()
                .map(|a| Target::new(&format!("http://{}:{port}", a.0), 1, false))
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
                    targets.push(Target::new(
                        &format!("http://{}:{}", a.0, srv.port()),
                        u32::from(srv.weight()).max(1),
                        false,
                    )?);
                }
            }
            (targets, lookup.as_lookup().valid_until())
        }
    };
    let ttl = valid_until
        .saturating_duration_since(std::time::Instant::now())
        .clamp(MIN_REFRESH, MAX_REFRESH);
    Ok((canonical(targets), ttl))
}
