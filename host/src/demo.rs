//! The quickstart behind `plumeway demo`: two small backends that echo what
//! they receive as JSON, and the proxy in front of them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};

/// The quickstart config, shipped inside the binary so the demo needs no files.
const QUICKSTART: &str = include_str!("../../examples/quickstart/plumeway.toml");

/// The quickstart config with the proxy listening on `listen`.
pub(crate) fn config(listen: SocketAddr, admin: SocketAddr) -> Result<Config, ConfigError> {
    let mut config = Config::parse(Path::new("examples/quickstart/plumeway.toml"), QUICKSTART)?;
    config.server.listen = vec![listen];
    if let Some(a) = &mut config.admin {
        a.listen = admin;
    }
    Ok(config)
}

/// Starts one echo backend on every target of every upstream in `config`.
pub(crate) async fn start_backends(config: &Config) -> std::io::Result<()> {
    let mut n = 0;
    for upstream in config.upstreams.values() {
        for target in &upstream.targets {
            n += 1;
            let addr = target.url.authority.as_str();
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("demo backend on {addr}: {e}")))?;
            tokio::spawn(serve_echo(listener, format!("demo-backend-{n}")));
        }
    }
    Ok(())
}

/// What to try once the demo is up.
pub(crate) fn banner(addr: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "plumeway demo is serving on http://{addr}\n\
         Route /api runs a plugin chain (all built in, see examples/quickstart/plumeway.toml):\n  \
         rewrite strip-api -> request [gateway-headers] -> upstream -> response [security-headers]; on_error json-errors\n\
         Try:\n  \
         curl -si http://{addr}/api/hello      # backend sees /hello and x-gateway; you get nosniff, DENY\n  \
         curl -s  http://{addr}/api/hello      # again: the other demo backend answers (round robin)\n  \
         curl -s  http://{addr}/other          # the plain route, no plugins\n\
         Dashboard: http://{admin}/   (metrics: http://{admin}/metrics)\n\
         Stop with Ctrl-C."
    )
}

async fn serve_echo(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(echo(&name, req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn echo(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: BTreeMap<&str, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
