//! `discovery = { etcd = { endpoints = [...], prefix = "/services/users/" } }`:
//! every key under the prefix is one instance, its value the JSON record
//! `{"url": "http://10.0.0.5:8080", "weight": 1, "down": false, "metadata": {}}`.
//!
//! Spoken over etcd v3's JSON gateway (`/v3/kv/range`, `/v3/watch`,
//! `/v3/lease/*`), which every etcd since 3.4 serves on its client port,
//! so that no gRPC stack is needed for a handful of calls. The instances
//! are read once with their revision, then a watch starts at the next
//! revision, so no change is missed across reconnects; if etcd compacted
//! that revision away meanwhile, the prefix is read again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, BytesMut};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::http::Client;
use super::{Discovery, Error, Record, Registration};
use crate::config::{EtcdDiscovery, Target, TargetUrl};

/// The `etcd` back end.
pub struct Etcd {
    api: Api,
    prefix: Vec<u8>,
    /// The valid instances as of `revision`, by key.
    instances: BTreeMap<Vec<u8>, Target>,
    revision: i64,
    watch: Option<WatchStream>,
    /// Instances this process registered: their key and the task that
    /// keeps their lease alive.
    registered: Mutex<HashMap<String, Registered>>,
}

struct Registered {
    lease: Arc<Mutex<i64>>,
    keepalive: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.api.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// A back end for `config`; nothing is asked until the first call.
    pub fn new(config: &EtcdDiscovery) -> Self {
        Self {
            api: Api {
                client: Client::new(Vec::new()),
                endpoints: config.endpoints.clone().into(),
                preferred: Arc::new(AtomicUsize::new(0)),
                timeout: config.timeout.get(),
            },
            prefix: config.prefix.clone().into_bytes(),
            instances: BTreeMap::new(),
            revision: 0,
            watch: None,
            registered: Mutex::default(),
        }
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::with_capacity(self.instances.len());
        for target in self.instances.values() {
            // Two keys naming one address are one endpoint.
            if !targets.iter().any(|t| t.url == target.url) {
                targets.push(target.clone());
            }
        }
        targets
    }

    /// Applies one key's new value; a value that is not a valid record is
    /// logged and leaves what the key had before, so a bad write does not
    /// take an instance away.
    fn put(&mut self, key: Vec<u8>, value: &[u8]) {
        match serde_json::from_slice::<Record>(value)
            .map_err(|e| e.to_string())
            .and_then(|r| r.target())
        {
            Ok(target) => {
                self.instances.insert(key, target);
            }
            Err(err) => tracing::warn!(
                key = %String::from_utf8_lossy(&key),
                error = %err,
                "etcd instance value is not a valid record; keeping what the key had"
            ),
        }
    }

    fn key(&self, id: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(id.as_bytes());
        key
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Leases are left to expire: a dropped back end is a dead owner.
        for (_, r) in self
            .registered
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            r.keepalive.abort();
        }
    }
}

impl Discovery for Etcd {
    const KIND: &'static str = "etcd";

    async fn resolve(&mut self) -> Result<Vec<Target>, Error> {
        self.watch = None;
        let range: RangeResponse = self
            .api
            .post(
                "/v3/kv/range",
                json!({ "key": BASE64.encode(&self.prefix), "range_end": BASE64.encode(range_end(&self.prefix)) }),
            )
            .await?;
        self.instances.clear();
        for kv in range.kvs {
            let (key, value) = (kv.key()?, kv.value()?);
            self.put(key, &value);
        }
        self.revision = range.header.revision;
        Ok(self.targets())
    }

    async fn watch(&mut self) -> Result<Vec<Target>, Error> {
        loop {
            if self.watch.is_none() {
                let body = json!({ "create_request": {
                    "key": BASE64.encode(&self.prefix),
                    "range_end": BASE64.encode(range_end(&self.prefix)),
                    "start_revision": (self.revision + 1).to_string(),
                }});
                self.watch = Some(self.api.open_watch(body).await?);
            }
            let stream = self.watch.as_mut().expect("opened above");
            let message = match stream.next().await {
                Ok(message) => message,
                Err(err) => {
                    self.watch = None;
                    return Err(Error::Failed(format!("etcd watch ended: {err}")));
                }
            };
            let result = match message {
                WatchMessage { error: Some(e), .. } => {
                    self.watch = None;
                    return Err(Error::Failed(format!("etcd watch failed: {}", e.message)));
                }
                WatchMessage { result: Some(r), .. } => r,
                WatchMessage { .. } => continue,
            };
            if result.compact_revision > 0 || result.canceled {
                // The revision we would resume from is gone: read anew.
                tracing::info!(
                    revision = self.revision,
                    compacted = result.compact_revision,
                    "etcd watch cancelled; reading the prefix again"
                );
                return self.resolve().await;
            }
            if result.events.is_empty() {
                // Created, or a progress notification.
                self.revision = self.revision.max(result.header.revision);
                continue;
            }
            for event in result.events {
                let key = event.kv.key()?;
                self.revision = self.revision.max(event.kv.mod_revision);
                if event.kind.as_deref() == Some("DELETE") {
                    self.instances.remove(&key);
                } else {
                    let value = event.kv.value()?;
                    self.put(key, &value);
                }
            }
            self.revision = self.revision.max(result.header.revision);
            return Ok(self.targets());
        }
    }

    async fn register(&self, instance: &Registration) -> Result<(), Error> {
        let key = self.key(&instance.id);
        let value = serde_json::to_vec(&Record::of(instance)).map_err(|e| e.to_string())?;
        let ttl = instance.ttl.max(Duration::from_secs(1));
        let lease = self.api.grant(ttl).await?;
        self.api.put(&key, &value, lease).await?;
        let lease = Arc::new(Mutex::new(lease));
        let keepalive = tokio::spawn(keep_alive(self.api.clone(), key, value, ttl, lease.clone())).abort_handle();
        let old = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance.id.clone(), Registered { lease, keepalive });
        if let Some(old) = old {
            old.keepalive.abort();
        }
        tracing::info!(instance = %instance, ttl = ?ttl, "registered in etcd");
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), Error> {
        let registered = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let key = self.key(id);
        let _: serde_json::Value = self
            .api
            .post("/v3/kv/deleterange", json!({ "key": BASE64.encode(&key) }))
            .await?;
        if let Some(r) = registered {
            r.keepalive.abort();
            let lease = *r.lease.lock().unwrap_or_else(PoisonError::into_inner);
            // The key is gone already; a lease that cannot be revoked expires.
            if let Err(err) = self
                .api
                .post::<serde_json::Value>("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
                .await
            {
                tracing::debug!(error = %err, "etcd lease not revoked; it will expire");
            }
        }
        tracing::info!(id, "deregistered from etcd");
        Ok(())
    }

    /// Rewrites the instance's record with `down` set, under the lease it
    /// has: etcd has no health of its own, and every proxy following the
    /// prefix stops (or resumes) sending it traffic.
    async fn set_health(&self, id: &str, passing: bool) -> Result<(), Error> {
        let key = self.key(id);
        let range: RangeResponse = self
            .api
            .post("/v3/kv/range", json!({ "key": BASE64.encode(&key) }))
            .await?;
        let kv = range
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Failed(format!("no instance {id:?} under the prefix")))?;
        let mut record: Record = serde_json::from_slice(&kv.value()?)
            .map_err(|e| Error::Failed(format!("instance {id:?} has no valid record: {e}")))?;
        record.down = !passing;
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        self.api.put(&key, &value, kv.lease).await?;
        Ok(())
    }
}

/// Renews the lease every third of its TTL; when etcd says it is gone
/// (etcd was down longer than the TTL), grants a new one and writes the
/// key again, so a live instance comes back by itself.
async fn keep_alive(api: Api, key: Vec<u8>, value: Vec<u8>, ttl: Duration, lease: Arc<Mutex<i64>>) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let id = *lease.lock().unwrap_or_else(PoisonError::into_inner);
        let renewed = api
            .post::<KeepAliveMessage>("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await;
        match renewed {
            Ok(KeepAliveMessage { result: Some(r) }) if r.ttl > 0 => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %err, "etcd lease not renewed");
                continue;
            }
        }
        match api.grant(ttl).await {
            Ok(new) => match api.put(&key, &value, new).await {
                Ok(()) => {
                    *lease.lock().unwrap_or_else(PoisonError::into_inner) = new;
                    tracing::info!(key = %String::from_utf8_lossy(&key), "etcd lease had expired; registered again");
                }
                Err(err) => tracing::warn!(error = %err, "etcd registration not renewed"),
            },
            Err(err) => tracing::warn!(error = %err, "etcd lease not granted"),
        }
    }
}

/// The cluster's API: each call goes to the endpoint that last answered,
/// and on a transport failure to the next one.
#[derive(Clone)]
struct Api {
    client: Client,
    endpoints: Arc<[TargetUrl]>,
    preferred: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Api {
    /// Tries each endpoint in turn, starting with the one that answered
    /// last, until `attempt` gets an answer from one (`Ok`, which may itself
    /// be an error the server gave); `Err` moves on to the next endpoint.
    async fn first_answer<T, Fut>(&self, attempt: impl Fn(TargetUrl) -> Fut) -> Result<T, String>
    where
        Fut: Future<Output = Result<Result<T, String>, String>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            match attempt(self.endpoints[at].clone()).await {
                Ok(answer) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return answer;
                }
                Err(err) => errors.push(err),
            }
        }
        Err(errors.join("; "))
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T, String> {
        let body = serde_json::to_vec(&body).expect("JSON encodes");
        self.first_answer(|server| {
            let body = body.clone();
            async move {
                let reply = self
                    .client
                    .call(Method::POST, &server, path, Some(body), self.timeout)
                    .await?;
                // An answer, even an error, is etcd's word: no other endpoint.
                Ok(reply.success(&Method::POST, &server, path).and_then(|reply| {
                    serde_json::from_slice(&reply.body)
                        .map_err(|e| format!("POST {server}{path}: unexpected answer: {e}"))
                }))
            }
        })
        .await
    }

    async fn open_watch(&self, body: serde_json::Value) -> Result<WatchStream, String> {
        let body = serde_json::to_vec(&body).expect("JSON encodes");
        self.first_answer(|server| {
            let body = body.clone();
            async move {
                let response = self
                    .client
                    .open(Method::POST, &server, "/v3/watch", Some(body), self.timeout)
                    .await?;
                if !response.status().is_success() {
                    return Err(format!("POST {server}/v3/watch: {}", response.status()));
                }
                Ok(Ok(WatchStream {
                    body: response.into_body(),
                    buffer: BytesMut::new(),
                }))
            }
        })
        .await
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, String> {
        let granted: LeaseGrant = self
            .post("/v3/lease/grant", json!({ "TTL": ttl.as_secs().max(1).to_string() }))
            .await?;
        if granted.id == 0 {
            return Err(format!("etcd granted no lease: {}", granted.error.unwrap_or_default()));
        }
        Ok(granted.id)
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), String> {
        let _: serde_json::Value = self
            .post(
                "/v3/kv/put",
                json!({ "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string() }),
            )
            .await?;
        Ok(())
    }
}

/// An open watch: newline-separated JSON messages on one response body.
struct WatchStream {
    body: Incoming,
    buffer: BytesMut,
}

impl WatchStream {
    async fn next(&mut self) -> Result<WatchMessage, String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).map_err(|e| format!("unexpected watch message: {e}"));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("etcd closed the stream".to_owned()),
            }
        }
    }
}

/// The end of the range that holds every key starting with `prefix`: the
/// prefix with its last byte below 0xff incremented (etcd's own rule).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: "\0" means "to the end of the keyspace".
    vec![0]
}

// The gateway's JSON: int64s are strings, bytes are base64, and fields
// with default values are left out.

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    lease: i64,
}

impl KeyValue {
    fn key(&self) -> Result<Vec<u8>, Error> {
        BASE64
            .decode(&self.key)
            .map_err(|e| Error::Failed(format!("etcd sent a key that is not base64: {e}")))
    }

    fn value(&self) -> Result<Vec<u8>, Error> {
        BASE64
            .decode(&self.value)
            .map_err(|e| Error::Failed(format!("etcd sent a value that is not base64: {e}")))
    }
}

#[derive(Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<GatewayError>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default = "no_header")]
    header: Header,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    events: Vec<Event>,
}

fn no_header() -> Header {
    Header { revision: 0 }
}

#[derive(Deserialize)]
struct Event {
    /// `"DELETE"`, or absent for a put.
    #[serde(rename = "type")]
    kind: Option<String>,
    kv: KeyValue,
}

#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct LeaseGrant {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    error: Option<String>,
}

#[derive(Deserialize)]
struct KeepAliveMessage {
    result: Option<KeepAlive>,
}

#[derive(Deserialize)]
struct KeepAlive {
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
}

/// An int64 the gateway writes as a string (or, from some versions, a number).
fn int64<'de, D: serde::Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(de)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::range_end;

    #[test]
    fn range_end_covers_the_prefix() {
        assert_eq!(range_end(b"/services/users/"), b"/services/users0");
        assert_eq!(range_end(b"a\xff"), b"b");
        assert_eq!(range_end(b"\xff\xff"), b"\0");
    }
}
