//! Cost of one plugin call: a warm pooled instance vs a fresh instance per
//! call (`isolation = "per-request"`), through the same host API the proxy
//! uses (the request's headers lent to the call, one header set).
//!
//! `cargo run --release -p plumeway-bench --bin plugin-overhead [CALLS] [pooled|fresh]`
//!
//! CALLS (default 20,000) per round; naming one isolation measures only it,
//! for a profiler (`perf record -g`) to see one kind of call.

use std::path::Path;
use std::time::Instant;

use plumeway::config::Config;
use plumeway::plugin::CallInfo;
use plumeway::proxy::Proxy;

const CALLS: u32 = 20_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse(
        Path::new("bench.toml"),
        r#"
[plugins.pooled]
builtin = "headers"
config = { set = { "x-gateway" = "plumeway" } }
[plugins.fresh]
builtin = "headers"
config = { set = { "x-gateway" = "plumeway" } }
isolation = "per-request"
[upstreams.u]
targets = ["http://127.0.0.1:9"]
[[routes]]
upstream = "u"
request = ["pooled", "fresh"]
"#,
    )?;
    let proxy = Proxy::build(&config).await?;
    let mut args = std::env::args().skip(1);
    let calls: u32 = match args.next() {
        Some(n) => n.parse()?,
        None => CALLS,
    };
    let only = args.next();
    println!("plugin call overhead ({calls} calls each, 10 request headers, interleaved rounds)");
    println!("{:<24} {:>12}", "isolation", "µs per call");
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..3 {
        for (name, plugin) in proxy.plugins().iter() {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let (mut parts, ()) = request_with_headers().into_parts();
            let mut call = CallInfo::default();
            // Warm up: the first calls fault in pages and fill the pool.
            for _ in 0..200 {
                plugin.on_request(&mut parts, None, &mut call)?;
            }
            let start = Instant::now();
            for _ in 0..calls {
                plugin.on_request(&mut parts, None, &mut call)?;
            }
            let per_call = start.elapsed().as_secs_f64() * 1e6 / f64::from(calls);
            match results.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(per_call),
                None => results.push((name.to_owned(), vec![per_call])),
            }
            let _ = round;
        }
    }
    for (name, samples) in &results {
        let mut s = samples.clone();
        s.sort_by(f64::total_cmp);
        let label = if name == "pooled" {
            "pooled (warm instance)"
        } else {
            "per-request (fresh)"
        };
        println!(
            "{label:<24} {:>12.2}   (median of {:?})",
            s[s.len() / 2],
            samples.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn request_with_headers() -> http::Request<()> {
    let mut b = http::Request::get("/api/users?page=2").header("host", "api.example");
    for i in 0..9 {
        b = b.header(format!("x-header-{i}"), "some value of typical length");
    }
    b.body(()).expect("request")
}
