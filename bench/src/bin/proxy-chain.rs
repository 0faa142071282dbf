//! Whole-proxy cost with no plugins vs a 3-plugin chain (rewrite + request
//! header + response header), measured side by side: two proxy processes in
//! front of one backend, driven in interleaved rounds by the same load, with
//! each proxy's CPU time read from /proc.
//!
//! `cargo run --release -p plumeway-bench --bin proxy-chain [-- REQUESTS CONNECTIONS]`

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::time::Duration;

use plumeway_bench::{backend, cpu_time, load};

/// A proxy process, killed when dropped. `std::process` rather than
/// tokio's: tokio's `process` feature, enabled by any package built
/// together with `plumeway` (as `bench/compare.sh` builds this one), adds a
/// check for exited children to every park of plumeway's runtime too.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    // Re-executed as the proxy: the same code as the `plumeway` binary,
    // built in this run, so the figures never come from a stale binary. It
    // starts its own runtime, so this dispatch comes before ours. The proxy
    // in turn re-executes itself (this binary) to compile its plugins: that
    // goes to the same CLI, or each proxy would start this benchmark again.
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("run" | plumeway::plugin::COMPILE_COMMAND)) {
        std::process::exit(i32::from(plumeway::cli::main() != std::process::ExitCode::SUCCESS));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let requests: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30_000);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);

    let backend = backend().await?;
    let dir = tempfile::tempdir()?;
    let base = format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.b]\ntargets = [\"http://{backend}\"]\n");
    let plain = format!("{base}[[routes]]\nupstream = \"b\"\n");
    let chain = format!(
        r#"{base}
[plugins.strip]
builtin = "strip-prefix"
config = {{ prefix = "/api" }}
[plugins.req]
builtin = "headers"
config = {{ set = {{ "x-gateway" = "plumeway" }} }}
[plugins.resp]
builtin = "headers"
config = {{ set = {{ "x-content-type-options" = "nosniff" }} }}
[[routes]]
upstream = "b"
rewrite = "strip"
request = ["req"]
response = ["resp"]
"#
    );
    let mut proxies = Vec::new();
    for (name, toml) in [("no plugins", plain), ("3-plugin chain", chain)] {
        let path = dir.path().join(format!("{}.toml", proxies.len()));
        std::fs::write(&path, toml)?;
        let mut child = Proxy(
            std::process::Command::new(std::env::current_exe()?)
                .arg("run")
                .arg(&path)
                .args(["--log", "warn,plumeway::server=info"])
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?,
        );
        let stderr = child.0.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        // Its log is read on a thread of its own, to the end, so that the
        // proxy never blocks on a full pipe; the listening address is the
        // first thing wanted from it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next());
                if let (Some(addr), Some(tx)) = (addr, tx.take()) {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr: std::net::SocketAddr = tokio::task::spawn_blocking(move || rx.recv())
            .await?
            .map_err(|_| anyhow::anyhow!("proxy exited"))?
            .parse()?;
        proxies.push((name, addr, child));
    }

    println!("{requests} requests per run, {connections} connections, 3 interleaved rounds");
    println!(
        "{:<16} {:>6} {:>12} {:>16}",
        "proxy", "round", "requests/s", "CPU µs/request"
    );
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    for (_, addr, _) in &proxies {
        load(*addr, "/api/warm", connections, 2_000).await;
    }
    for round in 1..=3 {
        for (i, (name, addr, Proxy(child))) in proxies.iter().enumerate() {
            let pid = child.id();
            let before = cpu_time(pid)?;
            let run = load(*addr, "/api/users", connections, requests).await;
            let used = cpu_time(pid)? - before;
            anyhow::ensure!(run.failed == 0, "{name}: {} requests failed", run.failed);
            let per_req = used.as_secs_f64() * 1e6 / run.ok as f64;
            cpu[i].push(per_req);
            println!(
                "{name:<16} {round:>6} {:>12.0} {per_req:>16.2}",
                run.ok as f64 / run.elapsed.as_secs_f64()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let median = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let (none, chain) = (median(&cpu[0]), median(&cpu[1]));
    println!("\nmedian proxy CPU per request: no plugins {none:.2} µs, 3-plugin chain {chain:.2} µs");
    println!(
        "the chain costs {:.2} µs of CPU per request ({:.2}x)",
        chain - none,
        chain / none
    );
    Ok(())
}
