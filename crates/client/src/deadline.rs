//! Deadlines on every call the SDK makes, so a silent or stalling server
//! makes a command fail, never hang.
//!
//! The servers are not trusted to end what they start. Each call is bounded
//! four ways ([`Timeouts`]):
//!
//! - **connect**: the TCP connect, and then the TLS handshake, each within
//!   `connect` (a server that accepts and never completes TLS);
//! - **first message**: the reply's first message must arrive within
//!   `first_message` of the request's last byte leaving (a server that
//!   completes TLS and never answers; for an upload, the reply must come
//!   within `first_message` once the whole record was sent);
//! - **idle**: each further message of a reply stream within `idle` of the
//!   previous one (a server that sends the first chunk of a record and
//!   stalls), and each message of an upload must be taken by the server
//!   within `idle` (a server that stops reading);
//! - **unary**: a whole unary call (anything but `PutRecord`, `GetRecord`
//!   and `ListAudit`), headers to trailers, within `unary`.
//!
//! They are enforced below the generated clients, by [`TimedChannel`], so
//! every call on [`raw::MeshClients`](crate::raw::MeshClients) is bounded,
//! whichever code makes it. An expired deadline fails the call with
//! `DEADLINE_EXCEEDED` and a message naming the service and the deadline.
//!
//! A mesh file can change them (`[timeouts]`, milliseconds):
//!
//! ```toml
//! [timeouts]
//! connect_ms = 10000
//! unary_ms = 30000
//! first_message_ms = 30000
//! idle_ms = 30000
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};
use sesphr::rpc::Rpc;
use sesphr_identity::{Identity, Service as MeshService};
use sesphr_mesh::tls::{ChannelTimeouts, ClientTls};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, Service, StdError, http};
use tonic::transport::Channel;

/// The time limits of the SDK's calls (see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The TCP connect, and then the TLS handshake, each.
    pub connect: Duration,
    /// A whole unary call.
    pub unary: Duration,
    /// From the request's end to the reply's first message.
    pub first_message: Duration,
    /// Between two messages of a stream (either way).
    pub idle: Duration,
}

/// Default of [`Timeouts::connect`].
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
/// Default of [`Timeouts::unary`].
pub const DEFAULT_UNARY: Duration = Duration::from_secs(30);
/// Default of [`Timeouts::first_message`].
pub const DEFAULT_FIRST_MESSAGE: Duration = Duration::from_secs(30);
/// Default of [`Timeouts::idle`].
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT,
            unary: DEFAULT_UNARY,
            first_message: DEFAULT_FIRST_MESSAGE,
            idle: DEFAULT_IDLE,
        }
    }
}

/// The `[timeouts]` section of a mesh file: each key in milliseconds; a
/// key left out keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    /// [`Timeouts::connect`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    /// [`Timeouts::unary`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unary_ms: Option<u64>,
    /// [`Timeouts::first_message`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_message_ms: Option<u64>,
    /// [`Timeouts::idle`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

/// Longest accepted timeout: a day (a longer one is a typo, and would
/// overflow nothing but patience).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

impl TimeoutSettings {
    /// The timeouts these settings give, or what is wrong with them.
    pub fn resolve(&self) -> Result<Timeouts, String> {
        let d = Timeouts::default();
        let pick = |name: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(format!("timeouts.{name} must be > 0")),
            Some(ms) if ms > MAX_TIMEOUT_MS => {
                Err(format!("timeouts.{name} must be at most {MAX_TIMEOUT_MS}"))
            }
            Some(ms) => Ok(Duration::from_millis(ms)),
        };
        Ok(Timeouts {
            connect: pick("connect_ms", self.connect_ms, d.connect)?,
            unary: pick("unary_ms", self.unary_ms, d.unary)?,
            first_message: pick("first_message_ms", self.first_message_ms, d.first_message)?,
            idle: pick("idle_ms", self.idle_ms, d.idle)?,
        })
    }
}

/// Whether calls of this path stream (and so are bounded by the first
/// message and idle deadlines, not by the unary one).
fn is_streaming(path: &str) -> bool {
    matches!(
        Rpc::from_path(path),
        Some(Rpc::PutRecord | Rpc::GetRecord | Rpc::ListAudit)
    )
}

/// A `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
fn parse_grpc_timeout(v: &http::HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn grpc_timeout_value(d: Duration) -> http::HeaderValue {
    // At most 8 digits (the gRPC spec): milliseconds, else seconds.
    let ms = d.as_millis();
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    };
    http::HeaderValue::from_str(&text).expect("digits and a unit")
}

/// How far the request has gone out: what the reply deadlines start from.
#[derive(Debug)]
struct Sending {
    /// The request body was polled at least once (the connection is up).
    started: bool,
    /// Last time the request made progress (or the call started).
    last: Instant,
    /// Waiting for our own producer (an upload's next sealed segment): the
    /// server is not at fault, no deadline runs.
    local_wait: bool,
    /// When the request's last byte was handed over.
    ended: Option<Instant>,
}

type Shared = Arc<Mutex<Sending>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Sending> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a deadline is about, for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Connect,
    FirstMessage,
    Idle,
    Upload,
    Unary,
}

#[derive(Debug, Clone)]
struct CallDeadlines {
    service: &'static str,
    timeouts: Timeouts,
    /// The end of a unary call.
    total: Option<Instant>,
}

impl CallDeadlines {
    /// The deadline while no reply message has arrived yet.
    fn before_reply(&self, s: &Sending) -> Option<(Instant, Which)> {
        self.with_total(self.before_reply_phase(s))
    }

    /// [`Self::before_reply`] without a unary call's total.
    fn before_reply_phase(&self, s: &Sending) -> Option<(Instant, Which)> {
        let t = &self.timeouts;
        match (s.ended, s.started, s.local_wait) {
            (Some(end), _, _) => Some((end + t.first_message, Which::FirstMessage)),
            // Connecting: the connector bounds TCP and TLS; this is the
            // backstop.
            (None, false, _) => Some((s.last + 2 * t.connect + t.first_message, Which::Connect)),
            (None, true, true) => None,
            (None, true, false) => Some((s.last + t.idle, Which::Upload)),
        }
    }

    fn with_total(&self, phase: Option<(Instant, Which)>) -> Option<(Instant, Which)> {
        match (phase, self.total) {
            (Some((d, w)), Some(total)) if d < total => Some((d, w)),
            (_, Some(total)) => Some((total, Which::Unary)),
            (phase, None) => phase,
        }
    }

    fn expired(&self, which: Which) -> Status {
        let t = &self.timeouts;
        let service = self.service;
        Status::deadline_exceeded(match which {
            Which::Connect => format!(
                "{service} could not be reached within the connect deadline ({:?} each for TCP and TLS)",
                t.connect
            ),
            Which::FirstMessage => format!(
                "{service} sent no reply within the first-message deadline of {:?}",
                t.first_message
            ),
            Which::Idle => format!(
                "{service} stalled: no message for the idle deadline of {:?}",
                t.idle
            ),
            Which::Upload => format!(
                "{service} stopped reading the request: nothing taken for the idle deadline of {:?}",
                t.idle
            ),
            Which::Unary => format!(
                "{service} did not complete the call within the unary deadline of {:?}",
                t.unary
            ),
        })
    }
}

/// A [`Channel`] whose every call is bounded by [`Timeouts`]. The
/// generated clients of [`raw::MeshClients`](crate::raw::MeshClients) run
/// on it.
#[derive(Debug, Clone)]
pub struct TimedChannel {
    inner: Channel,
    service: &'static str,
    timeouts: Timeouts,
}

impl TimedChannel {
    /// `inner`, every call bounded by `timeouts`; `service` names the peer
    /// in deadline errors.
    pub fn new(inner: Channel, service: &'static str, timeouts: Timeouts) -> Self {
        Self {
            inner,
            service,
            timeouts,
        }
    }

    /// The timeouts of this channel.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A channel to `service` at `url` of the mesh of `trust_domain`: the
    /// server must present that service's identity (see
    /// [`sesphr_mesh::tls::channel`]); every call bounded by `timeouts`.
    pub(crate) fn connect(
        url: &str,
        tls: ClientTls,
        trust_domain: &str,
        service: MeshService,
        timeouts: Timeouts,
    ) -> Result<Self, crate::ClientError> {
        let expected = Identity::service(trust_domain, service);
        let name = match service {
            MeshService::CloudStorage => "CloudStorage",
            MeshService::Srs => "SRS",
            MeshService::AccessPolicy => "AccessPolicy",
        };
        Self::connect_to(url, tls, &expected, name, timeouts)
    }

    /// A channel to whoever presents `expected` at `url` (`name` in
    /// deadline errors).
    pub(crate) fn connect_to(
        url: &str,
        tls: ClientTls,
        expected: &Identity,
        name: &'static str,
        timeouts: Timeouts,
    ) -> Result<Self, crate::ClientError> {
        let channel = sesphr_mesh::tls::channel(
            url,
            tls,
            expected,
            ChannelTimeouts {
                connect: timeouts.connect,
                handshake: timeouts.connect,
                request: None,
            },
        )?;
        Ok(Self::new(channel, name, timeouts))
    }
}

impl Service<http::Request<Body>> for TimedChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, StdError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StdError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let start = Instant::now();
        let header = http::HeaderName::from_static("grpc-timeout");
        let asked = req.headers().get(&header).and_then(parse_grpc_timeout);
        let total = if is_streaming(req.uri().path()) {
            // A stream runs as long as it keeps moving, unless its caller
            // set a deadline.
            asked
        } else {
            // Unary: the configured deadline, told to the server too.
            req.headers_mut()
                .insert(header, grpc_timeout_value(self.timeouts.unary));
            Some(self.timeouts.unary)
        };
        let deadlines = CallDeadlines {
            service: self.service,
            timeouts: self.timeouts,
            total: total.map(|t| start + t),
        };
        let sending: Shared = Arc::new(Mutex::new(Sending {
            started: false,
            last: start,
            local_wait: false,
            ended: None,
        }));
        let req = req.map(|body| {
            Body::new(TrackedRequest {
                inner: body,
                sending: sending.clone(),
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut fut = std::pin::pin!(fut);
            // An error once our deadline passed is that deadline (tonic
            // enforces the `grpc-timeout` header too, with a vaguer message).
            let finish = |r: Result<http::Response<Body>, tonic::transport::Error>,
                          deadlines: CallDeadlines,
                          sending: Shared| match r {
                Ok(resp) => Ok(wrap(resp, deadlines, sending)),
                Err(e) => {
                    let passed = deadlines.before_reply(&lock(&sending));
                    match passed {
                        Some((d, which)) if d <= Instant::now() => {
                            Err(deadlines.expired(which).into())
                        }
                        _ => Err(e.into()),
                    }
                }
            };
            loop {
                let deadline = deadlines.before_reply(&lock(&sending));
                let Some((at, _)) = deadline else {
                    // Waiting for our own producer: wait for the reply or
                    // a change, re-checked now and then.
                    tokio::select! {
                        r = &mut fut => break finish(r, deadlines, sending),
                        _ = tokio::time::sleep(deadlines.timeouts.idle) => continue,
                    }
                };
                tokio::select! {
                    // Our deadline first when both are ready.
                    biased;
                    _ = tokio::time::sleep_until(at) => {
                        // The request may have moved on meanwhile.
                        let now = deadlines.before_reply(&lock(&sending));
                        if let Some((d, which)) = now
                            && d <= Instant::now()
                        {
                            return Err(deadlines.expired(which).into());
                        }
                    }
                    r = &mut fut => break finish(r, deadlines, sending),
                }
            }
        })
    }
}

fn wrap(
    resp: http::Response<Body>,
    deadlines: CallDeadlines,
    sending: Shared,
) -> http::Response<Body> {
    resp.map(|body| {
        Body::new(TimedBody {
            inner: body,
            deadlines,
            sending,
            framer: Framer::default(),
            last_message: None,
            handed_out: None,
            credit: Duration::ZERO,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            done: false,
        })
    })
}

/// The request body, reporting its progress to the reply's deadlines.
struct TrackedRequest {
    inner: Body,
    sending: Shared,
}

impl HttpBody for TrackedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let end = self.inner.is_end_stream();
        let mut s = lock(&self.sending);
        let now = Instant::now();
        s.started = true;
        match &polled {
            Poll::Pending => s.local_wait = true,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                s.local_wait = false;
                s.ended.get_or_insert(now);
            }
            Poll::Ready(Some(Ok(_))) => {
                s.local_wait = false;
                s.last = now;
                if end {
                    s.ended.get_or_insert(now);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            let mut s = lock(&self.sending);
            s.started = true;
            s.ended.get_or_insert_with(Instant::now);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts whole gRPC messages in a reply's bytes (5-byte prefix: a flag and
/// a big-endian length), so the idle deadline is between messages, not
/// between HTTP/2 frames a server could drip one byte at a time.
#[derive(Debug, Default)]
struct Framer {
    prefix: [u8; 5],
    have: usize,
    remaining: u64,
}

impl Framer {
    /// Consumes `data`; returns how many messages it completed.
    fn push(&mut self, mut data: &[u8]) -> usize {
        let mut done = 0;
        while !data.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(data.len());
                self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 5 {
                    let len = u32::from_be_bytes([
                        self.prefix[1],
                        self.prefix[2],
                        self.prefix[3],
                        self.prefix[4],
                    ]);
                    self.remaining = u64::from(len);
                    if self.remaining == 0 {
                        self.have = 0;
                        done += 1;
                    }
                }
                continue;
            }
            let n = (self.remaining.min(data.len() as u64)) as usize;
            self.remaining -= n as u64;
            data = &data[n..];
            if self.remaining == 0 {
                self.have = 0;
                done += 1;
            }
        }
        done
    }
}

/// A reply body whose messages must keep within the first-message and idle
/// deadlines (and a unary call's total).
struct TimedBody {
    inner: Body,
    deadlines: CallDeadlines,
    sending: Shared,
    framer: Framer,
    last_message: Option<Instant>,
    /// When a frame was last handed to the reader, until it polls again.
    handed_out: Option<Instant>,
    /// Time the reader spent on its own work since the last message (a
    /// slow disk or a slow pipe is not the server's stall).
    credit: Duration,
    sleep: Pin<Box<Sleep>>,
    done: bool,
}

impl TimedBody {
    fn deadline(&self) -> Option<(Instant, Which)> {
        let phase = match self.last_message {
            None => self.deadlines.before_reply_phase(&lock(&self.sending)),
            Some(last) => Some((last + self.deadlines.timeouts.idle, Which::Idle)),
        };
        self.deadlines
            .with_total(phase.map(|(d, which)| (d + self.credit, which)))
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        if let Some(at) = this.handed_out.take() {
            this.credit += at.elapsed();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if let Some(data) = frame.data_ref()
                    && this.framer.push(data) > 0
                {
                    this.last_message = Some(now);
                    this.credit = Duration::ZERO;
                }
                this.handed_out = Some(now);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.done = other.is_none();
                Poll::Ready(other)
            }
            Poll::Pending => loop {
                let Some((at, _)) = this.deadline() else {
                    // Still waiting for our own upload producer.
                    let idle = this.deadlines.timeouts.idle;
                    this.sleep.as_mut().reset(Instant::now() + idle);
                    let _ = this.sleep.as_mut().poll(cx);
                    return Poll::Pending;
                };
                if this.sleep.deadline() != at {
                    this.sleep.as_mut().reset(at);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        if let Some((d, which)) = this.deadline()
                            && d <= Instant::now()
                        {
                            this.done = true;
                            return Poll::Ready(Some(Err(this.deadlines.expired(which))));
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_resolve_with_defaults_and_refuse_zero() {
        assert_eq!(
            TimeoutSettings::default().resolve().unwrap(),
            Timeouts::default()
        );
        let t = TimeoutSettings {
            idle_ms: Some(1500),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(t.idle, Duration::from_millis(1500));
        assert_eq!(t.unary, DEFAULT_UNARY);
        let zero = TimeoutSettings {
            connect_ms: Some(0),
            ..Default::default()
        };
        assert!(zero.resolve().unwrap_err().contains("connect_ms"));
        let huge = TimeoutSettings {
            unary_ms: Some(u64::MAX),
            ..Default::default()
        };
        assert!(huge.resolve().is_err());
    }

    #[test]
    fn grpc_timeouts_round_trip() {
        for d in [
            Duration::from_millis(1),
            Duration::from_secs(30),
            Duration::from_secs(86_400),
        ] {
            assert_eq!(parse_grpc_timeout(&grpc_timeout_value(d)), Some(d));
        }
        assert_eq!(
            parse_grpc_timeout(&http::HeaderValue::from_static("2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_grpc_timeout(&http::HeaderValue::from_static("x")),
            None
        );
    }

    #[test]
    fn framer_counts_messages_across_frames() {
        let mut f = Framer::default();
        // An empty message, then a 3-byte one split over three pushes.
        assert_eq!(f.push(&[0, 0, 0, 0, 0]), 1);
        assert_eq!(f.push(&[0, 0, 0]), 0);
        assert_eq!(f.push(&[0, 3, b'a']), 0);
        assert_eq!(f.push(&[b'b', b'c', 0, 0, 0, 0, 0]), 2);
        // One byte at a time completes nothing until the end.
        let mut f = Framer::default();
        let msg = [0u8, 0, 0, 0, 2, 7, 7];
        let counts: Vec<usize> = msg.iter().map(|b| f.push(&[*b])).collect();
        assert_eq!(counts, vec![0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn streaming_paths_are_known() {
        assert!(is_streaming("/sesphr.v1.CloudStorage/GetRecord"));
        assert!(is_streaming("/sesphr.v1.CloudStorage/PutRecord"));
        assert!(is_streaming("/sesphr.v1.AccessPolicy/ListAudit"));
        assert!(!is_streaming("/sesphr.v1.CloudStorage/ListRecords"));
        assert!(!is_streaming("/sesphr.v1.Srs/ReEncrypt"));
    }
}
