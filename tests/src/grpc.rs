//! A real gRPC service (tonic) for the proxy tests: the `Echo` service of
//! `tests/proto/echo.proto`, served over h2c on 127.0.0.1.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The generated messages, client and server.
pub mod proto {
    #![allow(
        clippy::allow_attributes,
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("plumeway.test");
}

use proto::Msg;
use proto::echo_server::{Echo, EchoServer};

/// One server; `name` comes back in every answer.
#[derive(Debug, Clone)]
struct Service {
    name: String,
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    /// Echoes; `"sleep:MS"` waits first, `"fail:TEXT"` answers NOT_FOUND.
    async fn unary(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        let text = request.into_inner().text;
        if let Some(ms) = text.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        if let Some(what) = text.strip_prefix("fail:") {
            return Err(Status::not_found(what.to_owned()));
        }
        Ok(Response::new(Msg {
            text,
            server: self.name.clone(),
        }))
    }

    type ServerStreamStream = MsgStream;

    /// `text` = how many messages to send back.
    async fn server_stream(&self, request: Request<Msg>) -> Result<Response<MsgStream>, Status> {
        let n: usize = request.into_inner().text.parse().unwrap_or(0);
        let name = self.name.clone();
        let stream = futures_util::stream::iter((0..n).map(move |i| {
            Ok(Msg {
                text: i.to_string(),
                server: name.clone(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    /// Joins every message's text with `,`.
    async fn client_stream(&self, request: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
        let mut stream = request.into_inner();
        let mut texts = Vec::new();
        while let Some(msg) = stream.next().await {
            texts.push(msg?.text);
        }
        Ok(Response::new(Msg {
            text: texts.join(","),
            server: self.name.clone(),
        }))
    }

    type BidiStream = MsgStream;

    /// Answers each message as it comes, upper-cased.
    async fn bidi(&self, request: Request<Streaming<Msg>>) -> Result<Response<MsgStream>, Status> {
        let name = self.name.clone();
        let stream = request.into_inner().map(move |msg| {
            msg.map(|m| Msg {
                text: m.text.to_uppercase(),
                server: name.clone(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A running gRPC server; stopped when dropped, its connections too (it
/// runs on a runtime of its own, so that dropping it is a real crash as
/// the proxy sees it).
#[derive(Debug)]
pub struct GrpcServer {
    /// Where it listens (h2c).
    pub addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcServer {
    /// Serves the `Echo` service as `name`.
    pub async fn start(name: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let service = EchoServer::new(Service { name: name.to_owned() });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&accepted);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).inspect(move |_| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
                let serving = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = serving => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends every connection task with it.
        });
        Self {
            addr,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `http://ADDR`, for a config's targets.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client on one HTTP/2 connection to `addr`.
pub async fn client(addr: SocketAddr) -> proto::echo_client::EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    proto::echo_client::EchoClient::new(channel)
}
