//! The baselines: a plain tonic mTLS echo service, and the same service
//! writing what it receives to disk.
//!
//! `sesphr.bench.Echo` is written by hand over tonic's generic gRPC server:
//! `Up` (a client stream of chunks; answers how many bytes arrived) and
//! `Down` (streams the requested number of bytes). Plain, it is the transport
//! cost of a record upload and download, with no crypto and no storage.
//!
//! Durable ([`EchoServer::durable`]), `Up` writes every chunk to a file of
//! its own as it arrives (on the blocking pool, one hand-off per chunk, as
//! CloudStorage appends), and before answering fsyncs the file and its
//! directory, as CloudStorage does before it acknowledges a record; `Down`
//! then reads that file back in chunks (blocking pool, bounded read-ahead,
//! as CloudStorage serves a record). Side by side, the two baselines split
//! what a record costs into transport, durability and everything else (the
//! encryption, the checks, the metadata).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use std::convert::Infallible;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use sesphr_mesh::tls::{self, TlsMaterial};

/// One message of the echo service: a chunk of bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoChunk {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// How many bytes (`Down`) or were received (`Up`); for a durable server,
/// which stored object (`Up` answers it, `Down` reads it back).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoSize {
    #[prost(uint64, tag = "1")]
    pub bytes: u64,
    #[prost(uint64, tag = "2")]
    pub chunk: u64,
    #[prost(uint64, tag = "3")]
    pub object: u64,
}

const ECHO_UP: &str = "/sesphr.bench.Echo/Up";
const ECHO_DOWN: &str = "/sesphr.bench.Echo/Down";
const ECHO_MAX_MESSAGE: usize = 8 << 20;
/// Chunks read ahead of a slow reader (CloudStorage's figure).
const READ_AHEAD: usize = 4;

/// Where a durable echo server keeps what it received.
struct Objects {
    dir: PathBuf,
    next: AtomicU64,
}

impl Objects {
    fn path(&self, object: u64) -> PathBuf {
        self.dir.join(object.to_string())
    }
}

/// The echo service; see the module documentation.
#[derive(Clone, Default)]
pub struct EchoServer {
    objects: Option<Arc<Objects>>,
}

impl EchoServer {
    /// Moves bytes, stores nothing.
    pub fn plain() -> Self {
        Self::default()
    }

    /// Writes and fsyncs what `Up` receives under `dir` (created if
    /// missing), and `Down` reads it back.
    pub fn durable(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            objects: Some(Arc::new(Objects {
                dir: dir.to_path_buf(),
                next: AtomicU64::new(0),
            })),
        })
    }
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "sesphr.bench.Echo";
}

fn io_status(e: std::io::Error) -> Status {
    Status::internal(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(io_status)
}

/// `bytes` bytes of `fill` in messages of at most `chunk` bytes, all slices
/// of one buffer (no copies, as the cheapest possible sender would do).
fn chunks_of(fill: u8, bytes: u64, chunk: usize) -> impl Iterator<Item = EchoChunk> {
    let buf = Bytes::from(vec![fill; chunk]);
    let mut left = bytes;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(chunk as u64) as usize;
        left -= n as u64;
        Some(EchoChunk {
            data: buf.slice(..n),
        })
    })
}

struct Up(Option<Arc<Objects>>);

impl tonic::server::ClientStreamingService<EchoChunk> for Up {
    type Response = EchoSize;
    type Future = BoxFuture<tonic::Response<EchoSize>, Status>;

    fn call(&mut self, req: tonic::Request<Streaming<EchoChunk>>) -> Self::Future {
        let objects = self.0.clone();
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut bytes = 0u64;
            let Some(objects) = objects else {
                while let Some(c) = stream.message().await? {
                    bytes += c.data.len() as u64;
                }
                return Ok(tonic::Response::new(EchoSize {
                    bytes,
                    ..Default::default()
                }));
            };
            let object = objects.next.fetch_add(1, Ordering::Relaxed);
            let path = objects.path(object);
            let mut file = blocking(move || File::create(path)).await?;
            while let Some(c) = stream.message().await? {
                bytes += c.data.len() as u64;
                file = blocking(move || file.write_all(&c.data).map(|()| file)).await?;
            }
            let dir = objects.dir.clone();
            blocking(move || {
                file.sync_all()?;
                File::open(dir)?.sync_all()
            })
            .await?;
            Ok(tonic::Response::new(EchoSize {
                bytes,
                chunk: 0,
                object,
            }))
        })
    }
}

struct Down(Option<Arc<Objects>>);

type ChunkStream = futures::stream::BoxStream<'static, Result<EchoChunk, Status>>;

/// `bytes` bytes of a stored object in `chunk`-sized reads, on the
/// blocking pool.
fn read_back(path: PathBuf, bytes: u64, chunk: usize) -> ChunkStream {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(io_status(e)));
                return;
            }
        };
        let mut left = bytes;
        while left > 0 {
            let mut buf = vec![0u8; left.min(chunk as u64) as usize];
            let msg = file.read_exact(&mut buf).map_err(io_status);
            left -= buf.len() as u64;
            let failed = msg.is_err();
            let msg = msg.map(|()| EchoChunk {
                data: Bytes::from(buf),
            });
            if tx.blocking_send(msg).is_err() || failed {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

impl tonic::server::ServerStreamingService<EchoSize> for Down {
    type Response = EchoChunk;
    type ResponseStream = ChunkStream;
    type Future = BoxFuture<tonic::Response<ChunkStream>, Status>;

    fn call(&mut self, req: tonic::Request<EchoSize>) -> Self::Future {
        let objects = self.0.clone();
        Box::pin(async move {
            let EchoSize {
                bytes,
                chunk,
                object,
            } = req.into_inner();
            let chunk = chunk.clamp(1, 4 << 20) as usize;
            if let Some(objects) = objects {
                return Ok(tonic::Response::new(read_back(
                    objects.path(object),
                    bytes,
                    chunk,
                )));
            }
            let stream = futures::stream::iter(chunks_of(0x42, bytes, chunk).map(Ok));
            Ok(tonic::Response::new(stream.boxed()))
        })
    }
}

impl Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let objects = self.objects.clone();
        match req.uri().path() {
            ECHO_UP => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<EchoSize, EchoChunk>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .max_decoding_message_size(ECHO_MAX_MESSAGE)
                    .max_encoding_message_size(ECHO_MAX_MESSAGE);
                Ok(grpc.client_streaming(Up(objects), req).await)
            }),
            ECHO_DOWN => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<EchoChunk, EchoSize>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .max_decoding_message_size(ECHO_MAX_MESSAGE)
                    .max_encoding_message_size(ECHO_MAX_MESSAGE);
                Ok(grpc.server_streaming(Down(objects), req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Serves `echo` over mTLS (client certificates from `tls`'s CA required)
/// on `listener` until the process ends.
pub async fn serve_echo(
    listener: tokio::net::TcpListener,
    tls: &TlsMaterial,
    echo: EchoServer,
) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .tls_config(tls.server_config(true))?
        .add_service(echo)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// A client of [`EchoServer`].
#[derive(Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// The echo server presents the dev PKI's CloudStorage certificate
    /// (`sesphr-bench echo-server`); nothing else is accepted there.
    pub fn connect(url: &str, tls: &TlsMaterial) -> anyhow::Result<Self> {
        let server = sesphr_identity::Identity::service(
            sesphr_identity::DEFAULT_TRUST_DOMAIN,
            sesphr_identity::Service::CloudStorage,
        );
        let channel = tls::channel(url, tls.client_config(), &server, Duration::from_secs(3600))?;
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(ECHO_MAX_MESSAGE)
            .max_encoding_message_size(ECHO_MAX_MESSAGE);
        Ok(Self { grpc })
    }

    /// Streams `bytes` up in chunks of `chunk`; returns what the server
    /// counted, and the object it stored them as (durable servers).
    pub async fn up(&self, bytes: u64, chunk: usize) -> Result<(u64, u64), Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let stream = futures::stream::iter(chunks_of(0x17, bytes, chunk));
        let path = http::uri::PathAndQuery::from_static(ECHO_UP);
        let codec = tonic_prost::ProstCodec::<EchoChunk, EchoSize>::default();
        let r = grpc
            .client_streaming(tonic::Request::new(stream), path, codec)
            .await?
            .into_inner();
        Ok((r.bytes, r.object))
    }

    /// Streams `bytes` down in chunks of `chunk` (of `object`, on a durable
    /// server); returns the bytes received.
    pub async fn down(&self, bytes: u64, chunk: usize, object: u64) -> Result<u64, Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(ECHO_DOWN);
        let codec = tonic_prost::ProstCodec::<EchoSize, EchoChunk>::default();
        let req = tonic::Request::new(EchoSize {
            bytes,
            chunk: chunk as u64,
            object,
        });
        let mut stream = grpc.server_streaming(req, path, codec).await?.into_inner();
        let mut got = 0u64;
        while let Some(c) = stream.message().await? {
            got += c.data.len() as u64;
        }
        Ok(got)
    }
}
