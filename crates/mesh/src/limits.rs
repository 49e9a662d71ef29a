//! Per-identity limits on the mesh's expensive RPCs.
//!
//! One authenticated client — compromised, buggy, or a script gone wrong —
//! must not starve a clinic's other users. Every service wraps its gRPC
//! service in [`Limited`], which, before the handler runs, charges the
//! caller's token bucket and counts the caller's calls in flight:
//!
//! - **rate**: each identity may start `burst` expensive calls at once and
//!   then `rate` per second on average (shared by all expensive RPCs of one
//!   service process);
//! - **concurrency**: each identity may have at most
//!   `max_streams_per_identity` expensive calls open at once. A call counts
//!   until its response has been sent in full (a `GetRecord` download until
//!   its last chunk), or the client goes away.
//!
//! A refusal is `RESOURCE_EXHAUSTED` with a message that names the limit.
//! The mesh's own services (`/service/*`) are exempt: they call on behalf of
//! users who were already counted. Callers without a certificate (enrollment
//! only) are counted per remote IP address.
//!
//! `max_concurrent_streams` is the HTTP/2 setting of each connection.
//! Which RPCs are counted is the `cost` column of the one RPC table
//! (`sesphr::rpc::TABLE`); cheap calls (health, reflection,
//! `ListGrants`, …) are not counted. The SRS additionally keeps its own `ReEncrypt` bucket
//! (`reencrypt_rate`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use sesphr::rpc::{Cost, RpcTable, TABLE};
use sesphr_identity::Caller;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::ratelimit::RateLimiter;
use crate::transport::{Holding, PeerInfo};

/// Default expensive calls per second per identity (and service).
pub const DEFAULT_RATE: f64 = 1_000.0;
/// Default burst per identity.
pub const DEFAULT_BURST: u32 = 2_000;
/// Default expensive calls in flight per identity (and service).
pub const DEFAULT_MAX_STREAMS_PER_IDENTITY: u32 = 64;
/// Default HTTP/2 streams per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// The configurable limits of one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Expensive calls per second per identity, on average.
    pub rate: f64,
    /// Expensive calls an idle identity may start at once.
    pub burst: u32,
    /// Expensive calls one identity may have open at once.
    pub max_streams_per_identity: u32,
    /// HTTP/2 streams per connection (all calls).
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RATE,
            burst: DEFAULT_BURST,
            max_streams_per_identity: DEFAULT_MAX_STREAMS_PER_IDENTITY,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

impl Limits {
    /// Every problem with these values, one message each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.rate.is_finite() && self.rate > 0.0) {
            out.push(format!(
                "limits.rate_per_identity {} must be > 0",
                self.rate
            ));
        }
        if self.burst == 0 {
            out.push("limits.burst_per_identity must be >= 1".to_owned());
        }
        if self.max_streams_per_identity == 0 {
            out.push("limits.max_streams_per_identity must be >= 1".to_owned());
        }
        if self.max_concurrent_streams == 0 {
            out.push("limits.max_concurrent_streams must be >= 1".to_owned());
        }
        out
    }
}

/// Shared state of one service's limits.
struct State {
    limits: Limits,
    service: &'static str,
    buckets: RateLimiter,
    in_flight: Mutex<HashMap<String, u32>>,
}

impl State {
    fn in_flight(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Releases one in-flight slot of an identity when dropped.
struct Slot {
    state: Arc<State>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.state.in_flight();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// A gRPC service with per-identity limits in front of it.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    state: Arc<State>,
    table: RpcTable,
}

impl<S: NamedService> Limited<S> {
    /// Limits `inner` by the cost classes of the mesh's table.
    pub fn new(inner: S, limits: Limits) -> Self {
        Self::with_table(inner, limits, S::NAME, TABLE)
    }
}

impl<S> Limited<S> {
    /// Limits `inner` (named `service` in messages) by the cost classes of
    /// `table`.
    pub fn with_table(inner: S, limits: Limits, service: &'static str, table: RpcTable) -> Self {
        let state = State {
            limits,
            service,
            buckets: RateLimiter::new(limits.rate, limits.burst),
            in_flight: Mutex::new(HashMap::new()),
        };
        Self {
            inner,
            state: Arc::new(state),
            table,
        }
    }
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

/// Who is counted for a request: `None` if exempt. The caller is the one
/// the authorization layer (which runs first) put into the extensions.
fn caller_key<B>(req: &http::Request<B>) -> Option<String> {
    match req.extensions().get::<Caller>() {
        Some(Caller::Service(_) | Caller::SrsNode(_)) => None,
        Some(Caller::Anonymous) | None => {
            let ip = req
                .extensions()
                .get::<PeerInfo>()
                .and_then(|i| i.tcp.remote_addr())
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "unknown".into());
            Some(format!("anonymous@{ip}"))
        }
        Some(caller) => Some(caller.to_string()),
    }
}

impl State {
    /// Takes a token and an in-flight slot for `key`, or says why not.
    fn admit(self: &Arc<Self>, key: String, method: &str) -> Result<Slot, tonic::Status> {
        let max = self.limits.max_streams_per_identity;
        let mut map = self.in_flight();
        let n = map.get(&key).copied().unwrap_or(0);
        if n >= max {
            drop(map);
            tracing::warn!(caller = %key, method, "concurrent call limit reached");
            return Err(tonic::Status::resource_exhausted(format!(
                "{key} already has {n} calls open on {} (limit {max} per identity); \
                 wait for one to finish",
                self.service
            )));
        }
        if !self.buckets.check(&key, Instant::now()) {
            drop(map);
            tracing::warn!(caller = %key, method, "rate limit reached");
            return Err(tonic::Status::resource_exhausted(format!(
                "rate limit of {} calls/s (burst {}) per identity reached for {key} on {}; \
                 retry shortly",
                self.limits.rate, self.limits.burst, self.service
            )));
        }
        map.insert(key.clone(), n + 1);
        Ok(Slot {
            state: self.clone(),
            key,
        })
    }
}

impl<S> Service<http::Request<Body>> for Limited<S>
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
        // The clone is not necessarily ready; the ready one goes to work.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        // The cost class comes from the one RPC table.
        let expensive = self
            .table
            .lookup(path)
            .is_some_and(|spec| spec.cost == Cost::Expensive);
        let slot = if expensive {
            match caller_key(&req).map(|key| self.state.admit(key, path)) {
                Some(Ok(slot)) => Some(slot),
                Some(Err(status)) => return Box::pin(async move { Ok(status.into_http()) }),
                None => None,
            }
        } else {
            None
        };
        Box::pin(async move {
            let resp = inner.call(req).await?;
            Ok(match slot {
                // Held until the response body is sent in full or dropped.
                Some(slot) => resp.map(|body| Body::new(Holding::new(body, slot))),
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
        assert!(Limits::default().problems().is_empty());
        let bad = Limits {
            rate: 0.0,
            burst: 0,
            max_streams_per_identity: 0,
            max_concurrent_streams: 0,
        };
        assert_eq!(bad.problems().len(), 4);
    }

    #[test]
    fn slots_are_counted_and_released() {
        let state = Arc::new(State {
            limits: Limits {
                rate: 1000.0,
                burst: 1000,
                max_streams_per_identity: 2,
                max_concurrent_streams: 10,
            },
            service: "test",
            buckets: RateLimiter::new(1000.0, 1000),
            in_flight: Mutex::new(HashMap::new()),
        });
        let a = state.admit("alice".into(), "m").unwrap();
        let b = state.admit("alice".into(), "m").unwrap();
        let err = state.admit("alice".into(), "m").err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("limit 2 per identity"), "{err:?}");
        let _other = state.admit("bob".into(), "m").unwrap();
        drop(a);
        let _c = state.admit("alice".into(), "m").unwrap();
        drop(b);
        drop(_c);
        assert!(!state.in_flight().contains_key("alice"));
    }

    #[test]
    fn rate_is_per_identity() {
        let state = Arc::new(State {
            limits: Limits {
                rate: 1.0,
                burst: 2,
                max_streams_per_identity: 100,
                max_concurrent_streams: 10,
            },
            service: "test",
            buckets: RateLimiter::new(1.0, 2),
            in_flight: Mutex::new(HashMap::new()),
        });
        for _ in 0..2 {
            drop(state.admit("alice".into(), "m").unwrap());
        }
        let err = state.admit("alice".into(), "m").err().unwrap();
        assert!(err.message().contains("rate limit of 1 calls/s"), "{err:?}");
        assert!(state.admit("bob".into(), "m").is_ok());
    }
}
