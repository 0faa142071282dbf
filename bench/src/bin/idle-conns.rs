//! Holds idle keep-alive connections open, for `bench/compare.py`.
//!
//! `idle-conns ADDR N`: opens N connections to ADDR, sends one GET on each
//! and reads its answer, then prints `ready OK` (the connections that got
//! a 200) and keeps them all open, idle, until its standard input closes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, n] = args.as_slice() else {
        anyhow::bail!("usage: idle-conns ADDR N");
    };
    let addr: std::net::SocketAddr = addr.parse()?;
    let n: usize = n.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut open = Vec::with_capacity(n);
            let mut ok = 0;
            // A few hundred at a time: a listener's backlog is finite.
            for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
                let opened = futures_util::future::join_all(chunk.iter().map(|_| one(addr))).await;
                for conn in opened.into_iter().flatten() {
                    ok += 1;
                    open.push(conn);
                }
            }
            println!("ready {ok}");
            let mut buf = [0u8; 64];
            while tokio::io::stdin().read(&mut buf).await.is_ok_and(|n| n > 0) {}
            drop(open);
            Ok(())
        })
}

/// One connection that has had one request answered with 200.
async fn one(addr: std::net::SocketAddr) -> Option<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /api/hello HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    // The whole answer: a head and a 6-byte body.
    loop {
        let n = stream.read(&mut buf[got..]).await.ok()?;
        if n == 0 {
            return None;
        }
        got += n;
        let text = &buf[..got];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n")
            && got >= end + 4 + 6
        {
            return text.starts_with(b"HTTP/1.1 200").then_some(stream);
        }
        if got == buf.len() {
            return None;
        }
    }
}
