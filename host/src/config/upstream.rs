//! `[upstreams.NAME]`: where requests go and how connections to them behave.

use std::fmt;

use http::uri::{Authority, Scheme, Uri};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Duration, Invalid};

/// `[upstreams.NAME]`: a set of endpoints that serve the same thing.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `targets = ["http://127.0.0.1:9001", { url = "http://127.0.0.1:9002", weight = 3 }]`.
    pub targets: Vec<Target>,
    /// `balancer = "round-robin"`.
    #[serde(default)]
    pub balancer: Balancer,
    /// `timeouts = { connect = "1s", response_header = "15s" }`.
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// `pool = { idle_timeout = "90s", max_idle_per_endpoint = 64 }`.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// One endpoint of an upstream: `"http://host:port"` or
/// `{ url = "http://host:port", weight = 2, down = false }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Scheme and authority; a target has no path.
    pub url: TargetUrl,
    /// Relative share of traffic (≥ 1), used by weighted balancers.
    pub weight: u32,
    /// `down = true` keeps the target in the config but sends it nothing,
    /// the way an operator takes a server out of rotation without deleting it.
    pub down: bool,
}

/// A target URL: `http://HOST:PORT` (the port defaults to 80).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    /// The scheme; only `http` for now.
    pub scheme: Scheme,
    /// Host and port, with the port always present.
    pub authority: Authority,
}

/// `balancer = "round-robin"` or `balancer = { plugin = "NAME" }`: how an
/// endpoint is picked for each request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balancer {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// A balancer plugin from `[plugins.NAME]`.
    Plugin(String),
}

impl<'de> Deserialize<'de> for Balancer {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            plugin: String,
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Balancer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"round-robin\" or { plugin = \"NAME\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Balancer, E> {
                match v {
                    "round-robin" => Ok(Balancer::RoundRobin),
                    other => Err(E::custom(format!(
                        "unknown balancer {other:?}; expected \"round-robin\" or {{ plugin = \"NAME\" }}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Balancer, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Balancer::Plugin(t.plugin))
            }
        }
        de.deserialize_any(Visitor)
    }
}

impl Serialize for Balancer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Balancer::RoundRobin => s.serialize_str("round-robin"),
            Balancer::Plugin(name) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("plugin", name)?;
                m.end()
            }
        }
    }
}

/// Timeouts towards an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// Time to open a TCP connection; beyond it the client gets 504.
    pub connect: Duration,
    /// Time from sending the request until the response head arrives;
    /// beyond it the client gets 504 and the connection is dropped.
    pub response_header: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
        }
    }
}

/// The keep-alive pool of connections to each endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// An idle connection is closed after this long. `idle_timeout = "90s"`.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint at most. `max_idle_per_endpoint = 64`.
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 64,
        }
    }
}

impl UpstreamConfig {
    pub(super) fn validate(&self, name: &str, errors: &mut Vec<Invalid>) {
        let key = format!("upstreams.{name}");
        if self.targets.is_empty() {
            errors.push(Invalid::new(
                format!("{key}.targets"),
                "an upstream needs at least one target, e.g. targets = [\"http://127.0.0.1:9001\"]",
            ));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.url == t.url) {
                errors.push(Invalid::new(
                    format!("{key}.targets[{i}]"),
                    format!("{} is listed twice", t.url),
                ));
            }
        }
    }
}

impl TargetUrl {
    fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("invalid target URL {s:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("invalid target URL {s:?}: it needs a scheme, e.g. \"http://{s}\""))?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "invalid target URL {s:?}: scheme {scheme:?} is not supported; use http://"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("invalid target URL {s:?}: it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("invalid target URL {s:?}: user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "invalid target URL {s:?}: a target is scheme://host:port without a path; rewrite paths with a plugin"
            ));
        }
        let authority = if authority.port_u16().is_some() {
            authority.clone()
        } else {
            format!("{}:80", authority.host())
                .parse()
                .map_err(|e| format!("invalid target URL {s:?}: {e}"))?
        };
        Ok(Self { scheme, authority })
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default = "one")]
            weight: u32,
            #[serde(default)]
            down: bool,
        }
        fn one() -> u32 {
            1
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string or a table { url = \"...\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Target, E> {
                let url = TargetUrl::parse(v).map_err(E::custom)?;
                Ok(Target {
                    url,
                    weight: 1,
                    down: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Target, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if t.weight == 0 {
                    return Err(serde::de::Error::custom(
                        "weight must be at least 1; use down = true to send a target nothing",
                    ));
                }
                let url = TargetUrl::parse(&t.url).map_err(serde::de::Error::custom)?;
                Ok(Target {
                    url,
                    weight: t.weight,
                    down: t.down,
                })
            }
        }
        de.deserialize_any(Visitor)
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Target", 3)?;
        st.serialize_field("url", &self.url.to_string())?;
        st.serialize_field("weight", &self.weight)?;
        st.serialize_field("down", &self.down)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let t = TargetUrl::parse("http://127.0.0.1").unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:80");
        assert!(TargetUrl::parse("127.0.0.1:80").unwrap_err().contains("needs a scheme"));
        assert!(TargetUrl::parse("http://h:1/x").unwrap_err().contains("without a path"));
        assert!(TargetUrl::parse("ftp://h:1").unwrap_err().contains("not supported"));
    }
}
