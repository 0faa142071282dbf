//! WebSocket echo throughput, for `bench/compare.py`.
//!
//! `ws-bench serve`: an echo backend on 127.0.0.1; prints its port, runs
//! until its standard input closes.
//! `ws-bench load URL CONNECTIONS SECONDS`: that many connections each
//! send a 64-byte text message and wait for its echo, again and again;
//! prints the messages echoed and the messages per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve()),
        Some("load") if args.len() == 4 => {
            runtime.block_on(load(&args[1], args[2].parse()?, Duration::from_secs(args[3].parse()?)))
        }
        _ => anyhow::bail!("usage: ws-bench serve | ws-bench load URL CONNECTIONS SECONDS"),
    }
}

async fn serve() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    };
    // Stops when whoever started it closes our standard input.
    let stdin = async {
        let mut buf = [0u8; 64];
        while tokio::io::stdin().read(&mut buf).await.is_ok_and(|n| n > 0) {}
    };
    tokio::select! {
        () = accept => {}
        () = stdin => {}
    }
    Ok(())
}

async fn load(url: &str, connections: usize, duration: Duration) -> anyhow::Result<()> {
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        sockets.push(ws);
    }
    let start = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let (echoed, stop) = (Arc::clone(&echoed), Arc::clone(&stop));
            tokio::spawn(async move {
                let payload = "x".repeat(64);
                while !stop.load(Ordering::Relaxed) {
                    if ws.send(Message::text(payload.clone())).await.is_err() {
                        return;
                    }
                    match ws.next().await {
                        Some(Ok(m)) if m.len() == 64 => echoed.fetch_add(1, Ordering::Relaxed),
                        _ => return,
                    };
                }
                let _ = ws.close(None).await;
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    let n = echoed.load(Ordering::Relaxed);
    println!("{n} {:.0}", n as f64 / elapsed.as_secs_f64());
    Ok(())
}
