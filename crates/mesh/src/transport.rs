//! Connection-level defences of every listener.
//!
//! Per-identity limits ([`crate::limits`]) only start once a request has
//! arrived. Before that, a peer holds a socket, a file descriptor and some
//! memory for free: the SRS must finish TLS without a client certificate (so
//! `Enroll` can issue one) and the health port has no TLS at all. So every
//! listener accepts its connections itself ([`incoming_tls`],
//! [`incoming_plain`]) and hands tonic only connections that are admitted and
//! past their handshake:
//!
//! - **caps**: at most `max_connections_per_peer` connections from one IP
//!   address and `max_connections` in all per listener, counted from accept
//!   to close. A connection over a cap is closed at once; refusals are logged
//!   at most once per [`REFUSAL_LOG_INTERVAL`], with their count;
//! - **handshake timeout**: the TLS handshake must finish within
//!   `handshake_timeout`;
//! - **preface timeout**: the first request (HTTP/2 preface, settings and
//!   the first HEADERS) must arrive within `preface_timeout` of the
//!   handshake;
//! - **idle timeout**: a connection with no open stream for `idle_timeout`
//!   is closed (clients reconnect transparently on their next call);
//! - **keepalive**: HTTP/2 pings every `keepalive_interval` of silence; a
//!   peer that does not answer within `keepalive_timeout` is dropped (set on
//!   tonic's `Server`, see [`TransportLimits::server`]).
//!
//! The preface and idle timeouts need to know whether a connection has an
//! open stream: [`TrackStreams`], a layer in front of every service, counts
//! each connection's requests until their response bodies end, and the
//! connection's socket ([`Conn`]) fails its next read once the count has
//! stayed at zero for too long.
//!
//! [`WatchCap`] bounds the open `grpc.health.v1.Health/Watch` streams of the
//! plaintext health port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::task::AtomicWaker;
use sesphr_identity::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::trust::TrustRoots;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Default time a TLS handshake may take.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time from the handshake to the first request.
pub const DEFAULT_PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a connection may stay open without a stream.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default silence after which the server pings a connection.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default time a ping may wait for its answer.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connections per peer IP address and listener.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: u32 = 64;
/// Default connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;
/// Default open `Watch` streams on the plaintext health port.
pub const DEFAULT_MAX_HEALTH_WATCHES: u32 = 16;
/// At most one warning about refused connections per listener this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive of accepted sockets (the OS notices vanished peers even on
/// connections the HTTP/2 pings do not cover yet).
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The configurable connection limits of every listener of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    pub handshake_timeout: Duration,
    pub preface_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections_per_peer: u32,
    pub max_connections: u32,
    /// Open `Watch` streams on the plaintext health port.
    pub max_health_watches: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            preface_timeout: DEFAULT_PREFACE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_health_watches: DEFAULT_MAX_HEALTH_WATCHES,
        }
    }
}

impl TransportLimits {
    /// Every problem with these values, one message each (named by their
    /// `[transport]` keys).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, d) in [
            ("handshake_timeout_ms", self.handshake_timeout),
            ("preface_timeout_ms", self.preface_timeout),
            ("idle_timeout_ms", self.idle_timeout),
            ("keepalive_interval_ms", self.keepalive_interval),
            ("keepalive_timeout_ms", self.keepalive_timeout),
        ] {
            if d.is_zero() {
                out.push(format!("transport.{name} must be > 0"));
            }
        }
        for (name, n) in [
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("max_connections", self.max_connections),
            ("max_health_watches", self.max_health_watches),
        ] {
            if n == 0 {
                out.push(format!("transport.{name} must be >= 1"));
            }
        }
        out
    }

    /// A tonic server with these keepalive settings. Its HTTP/2 windows
    /// and frame size stay hyper's (1 MiB per stream and per connection,
    /// 16 KiB frames): larger ones let the plain echo upload 40–50 % faster
    /// but not a record (the client's sealing bounds it) nor a durable
    /// upload (the disk does), and would let every connection make the
    /// server hold up to the window unread (docs/BENCHMARKS.md, "HTTP/2
    /// windows and frames").
    pub fn server(&self) -> Server {
        Server::builder()
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
    }
}

// ---- admission ------------------------------------------------------------

/// A connection's address pair: unique among one listener's live connections.
type ConnKey = (Option<SocketAddr>, Option<SocketAddr>);

fn key_of(info: &TcpConnectInfo) -> ConnKey {
    (info.local_addr(), info.remote_addr())
}

#[derive(Default)]
struct GateState {
    per_peer: HashMap<IpAddr, u32>,
    total: u32,
    conns: HashMap<ConnKey, Arc<Activity>>,
    refused: u64,
    last_warning: Option<Instant>,
}

/// The admission state of one listener.
pub struct Gate {
    name: String,
    limits: TransportLimits,
    state: Mutex<GateState>,
}

impl Gate {
    /// `name` labels the listener in logs (e.g. `srs`, `srs health`).
    pub fn new(name: impl Into<String>, limits: TransportLimits) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            limits,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections currently admitted (open or in their handshake).
    pub fn open_connections(&self) -> u32 {
        self.state().total
    }

    /// Admits `stream` under the caps, or closes it.
    fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Conn> {
        let info = stream.connect_info();
        // Without a peer address there is nothing to count it under.
        let ip = info.remote_addr().map(|a| a.ip())?;
        let mut st = self.state();
        let per_peer = st.per_peer.get(&ip).copied().unwrap_or(0);
        let why = if st.total >= self.limits.max_connections {
            Some("max_connections")
        } else if per_peer >= self.limits.max_connections_per_peer {
            Some("max_connections_per_peer")
        } else {
            None
        };
        if let Some(limit) = why {
            st.refused += 1;
            let now = Instant::now();
            let due = st
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL);
            if due {
                let refused = std::mem::take(&mut st.refused);
                st.last_warning = Some(now);
                drop(st);
                tracing::warn!(
                    listener = %self.name,
                    peer = %ip,
                    limit,
                    refused,
                    per_peer_cap = self.limits.max_connections_per_peer,
                    cap = self.limits.max_connections,
                    "connections refused (count since the previous warning)"
                );
            }
            // Dropping the stream closes it.
            return None;
        }
        st.total += 1;
        st.per_peer.insert(ip, per_peer + 1);
        let activity = Arc::new(Activity::new(&self.limits));
        let key = key_of(&info);
        st.conns.insert(key, activity.clone());
        drop(st);
        Some(Conn {
            io: stream,
            info,
            activity,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            _permit: Permit {
                gate: self.clone(),
                ip,
                key,
            },
        })
    }

    fn activity(&self, key: &ConnKey) -> Option<Arc<Activity>> {
        self.state().conns.get(key).cloned()
    }
}

/// One admitted connection's place under the caps, released on close.
struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
    key: ConnKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.gate.state();
        st.total -= 1;
        if let Some(n) = st.per_peer.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.per_peer.remove(&self.ip);
            }
        }
        st.conns.remove(&self.key);
    }
}

// ---- activity and the connection ------------------------------------------

struct ActivityState {
    /// Requests whose responses have not ended.
    open: u32,
    /// Since when `open` is 0.
    idle_since: Instant,
    /// Whether a request has arrived (preface vs idle timeout).
    served: bool,
    /// Whether the timers run (not during the TLS handshake, which has its own).
    armed: bool,
}

/// What the socket of a connection needs to know about its streams.
struct Activity {
    state: Mutex<ActivityState>,
    /// The connection's pending read, woken when its last stream ends.
    reader: AtomicWaker,
    preface_timeout: Duration,
    idle_timeout: Duration,
}

impl Activity {
    fn new(limits: &TransportLimits) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                open: 0,
                idle_since: Instant::now(),
                served: false,
                armed: false,
            }),
            reader: AtomicWaker::new(),
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    fn state(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the preface timer (the handshake is done).
    fn arm(&self) {
        let mut st = self.state();
        st.armed = true;
        st.idle_since = Instant::now();
    }

    /// When the connection is to be closed, if no stream opens before.
    fn deadline(&self) -> Option<Instant> {
        let st = self.state();
        (st.armed && st.open == 0).then(|| {
            st.idle_since
                + if st.served {
                    self.idle_timeout
                } else {
                    self.preface_timeout
                }
        })
    }

    fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        let mut st = self.state();
        st.open += 1;
        st.served = true;
        StreamGuard {
            activity: self.clone(),
        }
    }
}

/// Counts one open stream of a connection.
struct StreamGuard {
    activity: Arc<Activity>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut st = self.activity.state();
        st.open -= 1;
        if st.open == 0 {
            st.idle_since = Instant::now();
            drop(st);
            // Re-arms the idle timer of the pending read.
            self.activity.reader.wake();
        }
    }
}

/// An admitted TCP connection: holds its place under the caps and fails its
/// reads once the preface or idle timeout has passed.
pub struct Conn {
    io: TcpStream,
    info: TcpConnectInfo,
    activity: Arc<Activity>,
    sleep: Pin<Box<Sleep>>,
    _permit: Permit,
}

impl Conn {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.activity.reader.register(cx.waker());
        let Some(deadline) = self.activity.deadline() else {
            return false;
        };
        if Instant::now() >= deadline {
            return true;
        }
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        // Registers the timer; ready means the deadline passed just now.
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Checked before reading: a peer that keeps sending pings or
        // settings but never a request is closed all the same.
        if this.expired(cx) {
            let served = this.activity.state().served;
            let what = if served {
                "idle timeout"
            } else {
                "no request within the preface timeout"
            };
            tracing::debug!(peer = ?this.info.remote_addr(), "closing connection: {what}");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// ---- accepting --------------------------------------------------------------

/// A stream of admitted connections for `serve_with_incoming_shutdown`. The
/// accept loop runs until tonic drops the stream (shutdown), which closes the
/// listening socket.
pub type Incoming<T> = ReceiverStream<Result<T, io::Error>>;

/// What the TLS handshake established about the peer: read from its
/// verified certificate once per connection, not once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// The certificate names this identity, in this mesh's trust domain.
    Verified(Identity),
    /// No client certificate (only the SRS listener allows that, for
    /// enrollment).
    NoCertificate,
    /// A certificate that names no usable identity here (no or several
    /// SPIFFE SANs, another trust domain, not chaining to the root of its
    /// class, expired); the reason.
    Rejected(String),
}

/// The connect info of a TLS connection (in every request's extensions).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub tcp: TcpConnectInfo,
    pub identity: Arc<PeerIdentity>,
    /// The client certificate's validity (unix seconds, notBefore and
    /// notAfter), if it presented one: a connection outliving its
    /// certificate is refused per request, and renewal compares it with
    /// the certificate the directory holds.
    pub validity: Option<(i64, i64)>,
    /// The device a user certificate names ([`crate::trust::device`]): the
    /// deny list may revoke one device of a user.
    pub device: Option<Arc<str>>,
}

/// A TLS connection whose peer identity was read at the handshake.
pub struct PeerConn {
    tls: TlsStream<Conn>,
    info: PeerInfo,
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// Admitted connections of a TLS listener, handshake done (within
/// `handshake_timeout`) and the peer's identity read ([`PeerInfo`] in every
/// request's extensions).
pub fn incoming_tls(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Arc<rustls::ServerConfig>,
    roots: Arc<TrustRoots>,
    trust_domain: &str,
) -> Incoming<PeerConn> {
    let acceptor = TlsAcceptor::from(tls);
    let timeout = gate.limits.handshake_timeout;
    let name = gate.name.clone();
    let trust_domain: Arc<str> = Arc::from(trust_domain);
    spawn_accept_loop(listener, gate, move |conn: Conn| {
        let acceptor = acceptor.clone();
        let name = name.clone();
        let trust_domain = trust_domain.clone();
        let roots = roots.clone();
        async move {
            let peer = conn.info.remote_addr();
            let tcp = conn.info.clone();
            match tokio::time::timeout(timeout, acceptor.accept(conn)).await {
                Ok(Ok(tls)) => {
                    tls.get_ref().0.activity.arm();
                    let chain = tls.get_ref().1.peer_certificates();
                    let identity = Arc::new(roots.peer_identity(
                        chain,
                        &trust_domain,
                        rustls::pki_types::UnixTime::now(),
                    ));
                    let leaf = chain.and_then(|c| c.first());
                    let validity = leaf.and_then(|leaf| crate::trust::validity(leaf));
                    let device = leaf
                        .and_then(|leaf| crate::trust::device(leaf))
                        .map(Arc::from);
                    Some(PeerConn {
                        tls,
                        info: PeerInfo {
                            tcp,
                            identity,
                            validity,
                            device,
                        },
                    })
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %name, ?peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(listener = %name, ?peer, "TLS handshake timed out");
                    None
                }
            }
        }
    })
}

/// Admitted connections of a plaintext listener.
pub fn incoming_plain(listener: TcpListener, gate: Arc<Gate>) -> Incoming<Conn> {
    spawn_accept_loop(listener, gate, |conn: Conn| async move {
        conn.activity.arm();
        Some(conn)
    })
}

/// Accept errors that say nothing about the listener (the peer went away
/// before `accept` returned).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn spawn_accept_loop<T, F, Fut>(listener: TcpListener, gate: Arc<Gate>, prepare: F) -> Incoming<T>
where
    T: Send + 'static,
    F: Fn(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    // Admitted connections are bounded by the caps; the channel only needs
    // to smooth bursts.
    let (tx, rx) = mpsc::channel::<Result<T, io::Error>>(64);
    tokio::spawn(async move {
        let mut tcp = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE));
        // Handshakes in progress; aborted when the loop ends.
        let mut handshakes = JoinSet::new();
        loop {
            let next = tokio::select! {
                _ = tx.closed() => break,
                Some(_) = handshakes.join_next() => continue,
                next = tcp.next() => next,
            };
            let stream = match next {
                None => break,
                Some(Ok(stream)) => stream,
                Some(Err(e)) if is_connection_error(&e) => continue,
                Some(Err(e)) => {
                    // Typically out of file descriptors: back off instead of
                    // spinning; the caps and timeouts free some soon.
                    tracing::warn!(listener = %gate.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(conn) = gate.admit(stream) else {
                continue;
            };
            let fut = prepare(conn);
            let tx = tx.clone();
            handshakes.spawn(async move {
                if let Some(io) = fut.await {
                    // Err: shutting down; dropping the connection closes it.
                    let _ = tx.send(Ok(io)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

// ---- stream tracking ----------------------------------------------------------

/// A response body that holds a guard until it ends or is dropped (an open
/// stream's count here, an in-flight slot in [`crate::limits`]).
pub(crate) struct Holding<G> {
    body: Body,
    _guard: G,
}

impl<G> Holding<G> {
    pub(crate) fn new(body: Body, guard: G) -> Self {
        Holding {
            body,
            _guard: guard,
        }
    }
}

impl<G: Send + Unpin + 'static> http_body::Body for Holding<G> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts each connection's open streams for the preface and idle timeouts
/// (`Server::layer`).
#[derive(Clone)]
pub struct TrackStreamsLayer {
    gate: Arc<Gate>,
}

impl TrackStreamsLayer {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

impl<S> tower::Layer<S> for TrackStreamsLayer {
    type Service = TrackStreams<S>;

    fn layer(&self, inner: S) -> TrackStreams<S> {
        TrackStreams {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TrackStreams<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Service<http::Request<Body>> for TrackStreams<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let ext = req.extensions();
        let key = ext
            .get::<PeerInfo>()
            .map(|i| key_of(&i.tcp))
            .or_else(|| ext.get::<TcpConnectInfo>().map(key_of));
        let guard = key
            .and_then(|k| self.gate.activity(&k))
            .map(|a| a.stream_opened());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match guard {
                Some(guard) => resp.map(|body| {
                    Body::new(Holding {
                        body,
                        _guard: guard,
                    })
                }),
                None => resp,
            })
        })
    }
}

// ---- health watches -----------------------------------------------------------

/// Whether a request is a health `Watch` (the health service's name comes
/// from the one RPC table).
fn is_health_watch(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(sesphr::rpc::Rpc::Health.method()))
        == Some("/Watch")
}

/// The health service with at most `max` open `Watch` streams; one more is
/// `RESOURCE_EXHAUSTED`. `Check` is not counted.
#[derive(Clone)]
pub struct WatchCap<S> {
    inner: S,
    slots: Arc<Semaphore>,
    max: u32,
}

impl<S> WatchCap<S> {
    pub fn new(inner: S, max: u32) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }
}

impl<S: NamedService> NamedService for WatchCap<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for WatchCap<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slot: Option<OwnedSemaphorePermit> = if is_health_watch(req.uri().path()) {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let max = self.max;
                    tracing::warn!(max, "health Watch refused: too many open");
                    let status = tonic::Status::resource_exhausted(format!(
                        "{max} health Watch streams are open on this port (the limit); \
                         use Check or retry later"
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        } else {
            None
        };
        Box::pin(async move {
            let resp = inner.call(req).await?;
            Ok(match slot {
                Some(slot) => resp.map(|body| Body::new(Holding { body, _guard: slot })),
                None => resp,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeroes_are_not() {
        let d = TransportLimits::default();
        assert!(d.problems().is_empty());
        assert!(d.handshake_timeout <= Duration::from_secs(10));
        assert!(d.preface_timeout <= Duration::from_secs(10));
        assert!(d.idle_timeout <= Duration::from_secs(10));
        let zero = TransportLimits {
            handshake_timeout: Duration::ZERO,
            preface_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            keepalive_interval: Duration::ZERO,
            keepalive_timeout: Duration::ZERO,
            max_connections_per_peer: 0,
            max_connections: 0,
            max_health_watches: 0,
        };
        assert_eq!(zero.problems().len(), 8);
    }

    #[tokio::test]
    async fn caps_are_per_peer_and_global_and_released_on_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = TransportLimits {
            max_connections_per_peer: 2,
            max_connections: 3,
            ..Default::default()
        };
        let gate = Gate::new("test", limits);
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..4 {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            match gate.admit(server) {
                Some(c) => held.push((c, _client)),
                None => refused += 1,
            }
        }
        assert_eq!((held.len(), refused), (2, 2), "per-peer cap of 2");
        assert_eq!(gate.open_connections(), 2);
        held.pop();
        assert_eq!(gate.open_connections(), 1);
        assert!(gate.state().conns.len() == 1);
        // The global cap binds before the per-peer one.
        let small = Gate::new(
            "test",
            TransportLimits {
                max_connections: 1,
                ..limits
            },
        );
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let a = small.admit(listener.accept().await.unwrap().0);
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let b = small.admit(listener.accept().await.unwrap().0);
        assert!(a.is_some() && b.is_none());
        assert_eq!(small.state().refused, 0, "the first refusal was logged");
    }
}
