//! `discovery = { KIND = { ... } }` on an upstream: where its endpoints come
//! from when the config does not list them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Duration, TargetUrl};

/// A service discovery back end.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// `file = { path = "instances.toml" }`: a file of instances (TOML
    /// `[[instances]]` tables, or a JSON array when it ends in `.json`),
    /// each `{ url, weight, down, metadata }`; watched, and re-read when it
    /// changes. A path is relative to the config file.
    File {
        /// The instances file.
        path: std::path::PathBuf,
    },
    /// `dns = { name = "users.svc", type = "a", port = 8080, server = "127.0.0.1:53", hold = "60s" }`:
    /// A records (each address on `port`) or SRV records (their targets and
    /// ports, SRV weights as weights), re-resolved when their TTL runs out.
    /// Without `server` the system's resolver configuration is used. A
    /// failed lookup keeps the last good set for `hold`.
    Dns(DnsDiscovery),
    /// `etcd = { endpoints = ["http://127.0.0.1:2379"], prefix = "/services/users/" }`:
    /// every key under `prefix` is one instance, its value JSON
    /// `{"url": "http://10.0.0.5:8080", "weight": 1, "down": false, "metadata": {}}`.
    Etcd(EtcdDiscovery),
    /// `consul = { address = "http://127.0.0.1:8500", service = "users", tag = "v2" }`:
    /// the service's instances whose health checks pass, followed with
    /// blocking queries.
    Consul(ConsulDiscovery),
}

impl fmt::Display for DiscoveryConfig {
    /// One line for `plumeway check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path } => write!(f, "discovery file {}", path.display()),
            Self::Dns(d) => {
                let record = match d.record {
                    DnsRecord::A => "A",
                    DnsRecord::Srv => "SRV",
                };
                write!(f, "discovery dns {record} {}", d.name)?;
                if let Some(port) = d.port {
                    write!(f, " port {port}")?;
                }
                match d.server {
                    Some(server) => write!(f, " via {server}")?,
                    None => f.write_str(" via the system resolver")?,
                }
                write!(f, ", hold {}", d.hold)
            }
            Self::Etcd(e) => {
                let endpoints: Vec<String> = e.endpoints.iter().map(ToString::to_string).collect();
                write!(f, "discovery etcd {} prefix {:?}", endpoints.join(","), e.prefix)
            }
            Self::Consul(c) => {
                write!(f, "discovery consul {} service {:?}", c.address, c.service)?;
                if let Some(tag) = &c.tag {
                    write!(f, " tag {tag:?}")?;
                }
                for (k, v) in &c.meta {
                    write!(f, " meta {k}={v:?}")?;
                }
                if let Some(dc) = &c.dc {
                    write!(f, " dc {dc}")?;
                }
                Ok(())
            }
        }
    }
}

/// The `dns` discovery back end.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// The name to resolve.
    pub name: String,
    /// `"a"` (the default) or `"srv"`.
    #[serde(rename = "type", default)]
    pub record: DnsRecord,
    /// The port of every address, for A records.
    pub port: Option<u16>,
    /// The DNS server to ask, e.g. `"127.0.0.1:8600"`.
    pub server: Option<std::net::SocketAddr>,
    /// How long the last good set is kept while lookups fail.
    #[serde(default = "default_hold")]
    pub hold: Duration,
}

fn default_hold() -> Duration {
    Duration::from_secs(60)
}

/// Which DNS records name the instances.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsRecord {
    /// Addresses; the port comes from the config.
    #[default]
    A,
    /// Service records: target, port and weight.
    Srv,
}

/// The `etcd` discovery back end (etcd v3, through its JSON gateway).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    /// The cluster's client URLs; asked in turn when one fails.
    #[serde(deserialize_with = "urls")]
    #[serde(serialize_with = "display_all")]
    pub endpoints: Vec<TargetUrl>,
    /// The key prefix; each key under it is one instance.
    pub prefix: String,
    /// Deadline for each request to etcd (the watch itself stays open).
    #[serde(default = "default_request_timeout")]
    pub timeout: Duration,
}

/// The `consul` discovery back end.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsulDiscovery {
    /// The agent's HTTP API.
    #[serde(default = "default_consul_address", deserialize_with = "url")]
    #[serde(serialize_with = "display")]
    pub address: TargetUrl,
    /// The service name.
    pub service: String,
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// Only instances whose service metadata has all of these values.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// The datacenter to ask about (the agent's own when absent).
    pub dc: Option<String>,
    /// An ACL token, sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// How long one blocking query may wait for a change.
    #[serde(default = "default_consul_wait")]
    pub wait: Duration,
    /// Deadline for each request, on top of `wait` for blocking queries.
    #[serde(default = "default_request_timeout")]
    pub timeout: Duration,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_consul_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_consul_address() -> TargetUrl {
    TargetUrl::parse("http://127.0.0.1:8500").expect("a valid URL")
}

fn url<'de, D: serde::Deserializer<'de>>(de: D) -> Result<TargetUrl, D::Error> {
    let s = String::deserialize(de)?;
    TargetUrl::parse(&s).map_err(serde::de::Error::custom)
}

fn urls<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<TargetUrl>, D::Error> {
    let list = Vec::<String>::deserialize(de)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom("give at least one endpoint"));
    }
    list.iter()
        .map(|s| TargetUrl::parse(s).map_err(serde::de::Error::custom))
        .collect()
}

fn display<S: serde::Serializer>(url: &TargetUrl, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(url)
}

fn display_all<S: serde::Serializer>(urls: &[TargetUrl], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(ToString::to_string))
}
