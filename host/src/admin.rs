//! The admin listener: Prometheus metrics, a JSON API, the live dashboard
//! and reloads. Loopback by default (`[admin] listen`), because it shows
//! the whole config and can change it.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the dashboard (HTML + JS in the binary, polling the API) |
//! | `GET /metrics` | Prometheus text exposition format 0.0.4 |
//! | `GET /healthz` | liveness: 200 while the process serves |
//! | `GET /readyz` | readiness: 200, or 503 once shutdown has begun |
//! | `GET /config` | the running config as JSON, secrets redacted |
//! | `GET /routes` | routes with their matches, upstream and plugins |
//! | `GET /upstreams` | endpoints with health, weight, in flight, circuit |
//! | `GET /plugins` | loaded plugins, hooks, limits, call and failure counts |
//! | `POST /reload` | reload the config file; 200, or 409 with the error |

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::State;
use crate::upstream::CircuitState;

/// The dashboard page.
const DASHBOARD: &str = include_str!("admin/dashboard.html");

/// Serves the admin API until `stop` fires.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<()>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = stop.changed() => return,
        }
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let serving = state.current();
    let proxy = &serving.proxy;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (&Method::GET, "/metrics") => {
            let upstreams: Vec<_> = proxy.upstreams().map(|(_, _, u)| Arc::clone(u)).collect();
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics().encode(&upstreams),
            )
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") if state.draining() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        (&Method::GET, "/readyz") => reply(StatusCode::OK, "text/plain", "ready\n"),
        (&Method::GET, "/config") => {
            let mut config = serde_json::to_value(&**proxy.config()).unwrap_or(Value::Null);
            redact(&mut config);
            json_reply(StatusCode::OK, &config)
        }
        (&Method::GET, "/routes") => json_reply(StatusCode::OK, &routes(proxy.config())),
        (&Method::GET, "/upstreams") => json_reply(StatusCode::OK, &upstreams(proxy)),
        (&Method::GET, "/plugins") => json_reply(StatusCode::OK, &plugins(proxy)),
        (&Method::GET, "/stats") => json_reply(
            StatusCode::OK,
            &json!({
                "uptime_s": state.uptime().as_secs_f64(),
                "requests_in_flight": state.metrics().in_flight(),
                "draining": state.draining(),
            }),
        ),
        (&Method::POST, "/reload") => match state.reload().await {
            Ok(done) => json_reply(StatusCode::OK, &json!({ "ok": true, "reloaded": done })),
            Err(error) => json_reply(StatusCode::CONFLICT, &json!({ "ok": false, "error": error })),
        },
        (
            _,
            "/" | "/metrics" | "/healthz" | "/readyz" | "/config" | "/routes" | "/upstreams" | "/plugins" | "/stats",
        ) => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n"),
        (_, "/reload") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST /reload\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn routes(config: &crate::config::Config) -> Value {
    let list: Vec<Value> = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "name": config.route_name(i),
                "match": r.matcher,
                "upstream": r.upstream,
                "rewrite": r.rewrite,
                "request": r.request,
                "response": r.response,
                "on_error": r.on_error,
                "websocket": r.websocket,
            })
        })
        .collect();
    Value::Array(list)
}

fn upstreams(proxy: &crate::proxy::Proxy) -> Value {
    let list: Vec<Value> = proxy
        .upstreams()
        .map(|(name, config, upstream)| {
            let set = upstream.current();
            let endpoints: Vec<Value> = set
                .endpoints()
                .iter()
                .map(|e| {
                    json!({
                        "url": &**e.label(),
                        "weight": e.weight,
                        "down": e.down,
                        "healthy": e.is_healthy(),
                        "ejected": e.is_ejected(),
                        "available": e.is_available(),
                        "circuit": match e.circuit() {
                            None => "none",
                            Some(CircuitState::Closed) => "closed",
                            Some(CircuitState::HalfOpen) => "half-open",
                            Some(CircuitState::Open) => "open",
                        },
                        "in_flight": e.in_flight(),
                        "requests": e.requests(),
                    })
                })
                .collect();
            json!({
                "name": name,
                "balancer": config.balancer,
                "discovery": config.discovery.as_ref().map(ToString::to_string),
                "health_checks": config.health.is_some(),
                "endpoints": endpoints,
            })
        })
        .collect();
    Value::Array(list)
}

fn plugins(proxy: &crate::proxy::Proxy) -> Value {
    let list: Vec<Value> = proxy
        .plugins()
        .iter()
        .map(|(name, plugin)| {
            let (calls, failures) = plugin.counts();
            let limits = plugin.limits();
            let source = proxy
                .config()
                .plugins
                .get(name)
                .map(|pc| match (&pc.builtin, &pc.path) {
                    (Some(b), _) => format!("builtin {b}"),
                    (None, Some(p)) => p.display().to_string(),
                    (None, None) => "-".to_owned(),
                });
            json!({
                "name": name,
                "source": source,
                "hooks": plugin.exported_hooks(),
                "limits": {
                    "memory": limits.memory.to_string(),
                    "time": limits.time.to_string(),
                    "fuel": limits.fuel,
                    "body": limits.body.to_string(),
                },
                "calls": calls,
                "failures": failures,
            })
        })
        .collect();
    Value::Array(list)
}

/// Replaces values whose key names a secret (an API key list, a token, a
/// password), wherever they sit: plugin configs are free-form.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let k = key.to_ascii_lowercase();
                let secret = ["key", "token", "secret", "password", "passwd", "credential", "auth"]
                    .iter()
                    .any(|s| k.contains(s));
                if secret && !v.is_null() && !v.is_object() {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_sit() {
        let mut v = json!({
            "plugins": { "key": { "config": { "header": "x-api-key", "keys": ["s3cret"] } } },
            "upstreams": { "u": { "discovery": { "consul": { "token": "t0ken", "service": "users" } } } },
        });
        redact(&mut v);
        // The plugin named "key" is a name, not a secret: its table stays,
        // but every secret-looking key inside it is replaced.
        let text = v.to_string();
        assert!(!text.contains("s3cret") && !text.contains("t0ken"), "{text}");
        assert_eq!(v["upstreams"]["u"]["discovery"]["consul"]["service"], "users");
    }
}
