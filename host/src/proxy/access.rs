//! The access log and per-request metrics, written when a response is
//! over (its body sent, failed, or abandoned by the client), so that they
//! carry the bytes sent and the whole duration.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::ShardedHistogram;
use http::{HeaderValue, Method, Version};

use crate::body::Done;
use crate::config::{AccessLogConfig, AccessLogFormat, Invalid};
use crate::metrics::{Metrics, RequestKey, method_label, status_class};

/// Lines waiting for the writer at most; beyond that lines are dropped
/// (and counted) rather than slowing every request down to the disk.
const QUEUE: usize = 16 * 1024;

/// Where access log lines go.
#[derive(Debug)]
pub struct AccessLog {
    enabled: bool,
    format: AccessLogFormat,
    /// To the writer thread, for `json` and `common`.
    lines: Option<SyncSender<String>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens the log `config` describes; a file that cannot be opened is a
    /// config error at `access_log.path`.
    pub fn open(config: &AccessLogConfig, base_dir: &Path) -> Result<Self, Invalid> {
        let lines = match (config.enabled, config.format) {
            (false, _) | (true, AccessLogFormat::Text) => None,
            (true, _) => {
                let out: Box<dyn std::io::Write + Send> = match &config.path {
                    Some(path) => {
                        let full = base_dir.join(path);
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&full)
                            .map_err(|e| {
                                Invalid::new("access_log.path", format!("cannot open {}: {e}", full.display()))
                            })?;
                        Box::new(file)
                    }
                    None => Box::new(std::io::stdout()),
                };
                let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
                std::thread::Builder::new()
                    .name("plumeway-access-log".into())
                    .spawn(move || write_lines(&rx, out))
                    .map_err(|e| Invalid::new("access_log", format!("cannot start the log writer: {e}")))?;
                Some(tx)
            }
        };
        Ok(Self {
            enabled: config.enabled,
            format: config.format,
            lines,
            dropped: AtomicU64::new(0),
        })
    }

    fn write(&self, entry: &Entry, bytes: u64, took: Duration, complete: bool) {
        // Made whenever the log is on (`Proxy::handle`, from the same
        // config as `self`).
        let Some(logged) = entry.logged.as_deref() else {
            return;
        };
        match (self.format, &self.lines) {
            (AccessLogFormat::Text, _) => tracing::info!(
                target: "plumeway::access",
                client = %entry.client,
                method = %entry.method,
                path = &*logged.path,
                version = ?entry.version,
                status = entry.status,
                bytes,
                complete,
                route = entry.route.as_deref().unwrap_or("-"),
                upstream = entry.upstream.as_deref().unwrap_or("-"),
                endpoint = entry.endpoint.as_deref().unwrap_or("-"),
                attempts = entry.attempts,
                request_id = super::request_id::text(&entry.request_id),
                duration_us = micros(took),
                upstream_us = micros(entry.upstream_time),
            ),
            (format, Some(lines)) => {
                let line = match format {
                    AccessLogFormat::Json => json_line(entry, logged, bytes, took, complete),
                    _ => common_line(entry, logged, bytes, took, complete),
                };
                if let Err(TrySendError::Full(_)) = lines.try_send(line) {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(dropped = n + 1, "access log writer cannot keep up; lines dropped");
                    }
                }
            }
            (_, None) => {}
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty, until
/// every sender is gone (the last config using this log was dropped).
fn write_lines(rx: &Receiver<String>, out: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// What is known about a request when its response head is ready.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) start: Instant,
    pub(super) client: IpAddr,
    pub(super) method: Method,
    pub(super) version: Version,
    pub(super) status: u16,
    pub(super) route: Option<Arc<str>>,
    pub(super) upstream: Option<Arc<str>>,
    pub(super) endpoint: Option<Arc<str>>,
    pub(super) attempts: u32,
    pub(super) upstream_time: Duration,
    pub(super) request_id: HeaderValue,
    /// Set when the access log is on.
    pub(super) logged: Option<Box<Logged>>,
}

/// What only the access log line shows. Boxed, and made only when the log
/// is on: the entry travels inside the response, which is moved several
/// times on its way to the client, and these fields were a quarter of it
/// (112 of ~470 bytes) on every request, logged or not.
#[derive(Debug)]
pub(super) struct Logged {
    pub(super) wall: SystemTime,
    pub(super) path: Box<str>,
    /// For the formats that show them (not `text`).
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) referer: Option<HeaderValue>,
}

/// Reports a finished request to the metrics and the access log.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(super) metrics: Arc<Metrics>,
    pub(super) route_duration: Option<ShardedHistogram>,
    pub(super) log: Arc<AccessLog>,
    pub(super) entry: Entry,
    pub(super) _counted: InFlight,
}

impl Finished {
    /// The request's id, as its `X-Request-Id` says.
    pub(crate) fn request_id(&self) -> &HeaderValue {
        &self.entry.request_id
    }
}

/// One request in `plumeway_requests_in_flight`, from its head until its
/// response is over, or until the client gave up before the head.
#[derive(Debug)]
pub(super) struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    pub(super) fn new(metrics: &Metrics) -> Self {
        metrics.requests_in_flight.inc();
        Self(metrics.requests_in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Done for Finished {
    fn done(self, bytes: u64, complete: bool) {
        let took = self.entry.start.elapsed();
        let e = &self.entry;
        let key = RequestKey {
            route: e.route.as_ref(),
            upstream: e.upstream.as_ref(),
            endpoint: e.endpoint.as_ref(),
            method: method_label(&e.method),
            status: status_class(e.status),
        };
        self.metrics.request(key, self.route_duration.as_ref(), took);
        if self.log.enabled {
            self.log.write(e, bytes, took, complete);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn json_line(e: &Entry, l: &Logged, bytes: u64, took: Duration, complete: bool) -> String {
    let header = |v: &Option<HeaderValue>| v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut line = serde_json::json!({
        "time": rfc3339(l.wall),
        "client": e.client.to_string(),
        "method": e.method.as_str(),
        "path": &*l.path,
        "version": format!("{:?}", e.version),
        "status": e.status,
        "bytes": bytes,
        "complete": complete,
        "duration_ms": took.as_secs_f64() * 1000.0,
        "upstream_ms": e.upstream_time.as_secs_f64() * 1000.0,
        "route": e.route.as_deref(),
        "upstream": e.upstream.as_deref(),
        "endpoint": e.endpoint.as_deref(),
        "attempts": e.attempts,
        "request_id": super::request_id::text(&e.request_id),
        "user_agent": header(&l.user_agent),
        "referer": header(&l.referer),
    })
    .to_string();
    line.push('\n');
    line
}

/// NCSA combined log format, then plumeway's own fields as `key=value`.
fn common_line(e: &Entry, l: &Logged, bytes: u64, took: Duration, complete: bool) -> String {
    let quoted = |v: &Option<HeaderValue>| {
        v.as_ref().map_or_else(
            || "-".to_owned(),
            |v| String::from_utf8_lossy(v.as_bytes()).replace('"', "\\\""),
        )
    };
    let mut line = String::with_capacity(256);
    let _ = writeln!(
        line,
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" rt={:.6} urt={:.6} route={} upstream={} endpoint={} attempts={} complete={} id={}",
        e.client,
        clf_time(l.wall),
        e.method,
        l.path.replace('"', "%22"),
        e.version,
        e.status,
        bytes,
        quoted(&l.referer),
        quoted(&l.user_agent),
        took.as_secs_f64(),
        e.upstream_time.as_secs_f64(),
        e.route.as_deref().unwrap_or("-"),
        e.upstream.as_deref().unwrap_or("-"),
        e.endpoint.as_deref().unwrap_or("-"),
        e.attempts,
        complete,
        super::request_id::text(&e.request_id),
    );
    line
}

/// Civil date and time (UTC) of a moment.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis(),
    )
}

fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        // 2026-11-26T07:14:38Z
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_677_278_250);
        assert_eq!(rfc3339(t), "2026-11-26T07:14:38.250Z");
        assert_eq!(clf_time(t), "26/Nov/2026:07:14:38 +0000");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
