//! A raw-TCP backend that misbehaves the way real ones do, for the failures
//! a well-behaved HTTP server library will not produce on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the chaos backend treats each connection.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Read the request, then close without answering (a reset before any
    /// response byte).
    CloseAfterRequest,
    /// Answer 200 with `Content-Length: 1000` but send only 100 body bytes,
    /// then close.
    TruncateBody,
    /// Close the connection as soon as it is accepted.
    ResetOnAccept,
    /// Read the request and never answer.
    Hang,
    /// Answer 200 with `Content-Length: 1000`, send 100 body bytes, then
    /// go silent without closing.
    StallBody,
    /// Answer with bytes that are not HTTP.
    Garbage,
}

/// A running chaos backend; stopped when dropped.
#[derive(Debug)]
pub struct Chaos {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Chaos {
    /// Starts a backend that misbehaves as `how` on every connection.
    pub async fn start(how: Misbehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind chaos");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (acc, req) = (Arc::clone(&accepted), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let req = Arc::clone(&req);
                tokio::spawn(async move {
                    if matches!(how, Misbehaviour::ResetOnAccept) {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    // Read up to the end of the request head (and a small body).
                    let mut buf = vec![0u8; 65536];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    req.fetch_add(1, Ordering::SeqCst);
                    match how {
                        Misbehaviour::CloseAfterRequest | Misbehaviour::ResetOnAccept => {
                            let _ = stream.set_zero_linger();
                        }
                        Misbehaviour::TruncateBody => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                                .await;
                            let _ = stream.write_all(&[b'x'; 100]).await;
                            let _ = stream.flush().await;
                            let _ = stream.set_zero_linger();
                        }
                        Misbehaviour::Hang => std::future::pending::<()>().await,
                        Misbehaviour::Garbage => {
                            let _ = stream.write_all(b"SPDY/9 banana\r\n\r\n").await;
                            let _ = stream.flush().await;
                        }
                        Misbehaviour::StallBody => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                                .await;
                            let _ = stream.write_all(&[b'x'; 100]).await;
                            let _ = stream.flush().await;
                            std::future::pending::<()>().await
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, for a config's `targets`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Complete request heads received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.task.abort();
    }
}
