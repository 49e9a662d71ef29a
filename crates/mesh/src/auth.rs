//! Who is calling, and whether the RPC table lets them: one tower layer in
//! front of every service of a listener.
//!
//! [`Authorize`] looks the request path up in the [`RpcTable`], takes the
//! peer identity the transport read from the verified certificate at the
//! handshake ([`PeerInfo`]), and either refuses the call (a path with no
//! row, no or a rejected certificate, a caller class the row does not name)
//! or puts the typed [`Caller`] into the request's extensions, where
//! handlers take it with [`caller`]. No handler reads certificates, and no
//! handler can forget to authorize: a service behind this layer is never
//! reached by a caller its row does not allow.
//!
//! Every refusal of an identified caller is handed to a [`RefusalAudit`]
//! (AccessPolicy writes it to its log; the other services send it there),
//! and the refusal is answered only after that.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use sesphr::rpc::{CallerClass, Rpc, RpcSpec, RpcTable};
use sesphr_identity::{Caller, Identity, Principal, Role};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::{Request, Status};

use crate::deny::{DenyList, Verdict};
use crate::transport::{PeerIdentity, PeerInfo};

/// Whether `id` belongs to the class.
pub fn class_matches(class: CallerClass, id: &Identity) -> bool {
    match (class, &id.principal) {
        (CallerClass::Anyone, _) => true,
        (CallerClass::Patient, Principal::User { role, .. }) => *role == Role::Patient,
        (CallerClass::Practitioner, Principal::User { role, .. }) => *role != Role::Patient,
        (CallerClass::Service(s), Principal::Service(t)) => s == *t,
        (CallerClass::SrsNode, Principal::SrsNode(_)) => true,
        (CallerClass::Operator, Principal::Operator(_)) => true,
        _ => false,
    }
}

/// Whether the row lets `id` call it.
pub fn spec_allows(spec: &RpcSpec, id: &Identity) -> bool {
    spec.callers.iter().any(|c| class_matches(*c, id))
}

/// Whether the table lets `id` call `rpc`.
pub fn is_allowed(rpc: Rpc, id: &Identity) -> bool {
    spec_allows(rpc.spec(), id)
}

/// A refused request: what the client is told, and whom to audit it for
/// (an identified caller refused by its row; nobody otherwise).
pub type Refusal = (Status, Option<(Identity, &'static RpcSpec)>);

/// The decision for one request: the typed caller, or the refusal.
pub fn decide(table: &RpcTable, path: &str, peer: &PeerIdentity) -> Result<Caller, Refusal> {
    decide_row(row(table, path)?, peer)
}

/// The table's row for `path`, or the refusal of a path with none.
fn row(table: &RpcTable, path: &str) -> Result<&'static RpcSpec, Refusal> {
    table.lookup(path).ok_or_else(|| {
        (
            Status::unimplemented(format!("{path} is not an RPC of this mesh")),
            None,
        )
    })
}

/// [`decide`] once the row is known.
fn decide_row(spec: &'static RpcSpec, peer: &PeerIdentity) -> Result<Caller, Refusal> {
    let name = spec.name;
    match peer {
        PeerIdentity::Rejected(why) => Err((Status::unauthenticated(why.clone()), None)),
        PeerIdentity::NoCertificate if spec.callers.contains(&CallerClass::Anyone) => {
            Ok(Caller::Anonymous)
        }
        PeerIdentity::NoCertificate => Err((
            Status::unauthenticated(format!(
                "{name} requires a client certificate from the mesh CA"
            )),
            None,
        )),
        PeerIdentity::Verified(id) if spec_allows(spec, id) => Ok(Caller::from_identity(id)),
        PeerIdentity::Verified(id) => {
            let allowed: Vec<String> = spec.callers.iter().map(|c| c.to_string()).collect();
            let status = Status::permission_denied(format!(
                "{} may not call {name} (allowed: {})",
                id.short(),
                allowed.join(", ")
            ));
            Err((status, Some((id.clone(), spec))))
        }
    }
}

/// The deny list's word on an admitted caller: users an operator disabled
/// and removed devices (`device`, from the caller's certificate) are
/// refused (audited), and every user while the list is stale.
pub fn screen(
    deny: &DenyList,
    caller: Caller,
    id: &Identity,
    device: Option<&str>,
    spec: &'static RpcSpec,
) -> Result<Caller, Refusal> {
    let Some((_, user)) = caller.as_user() else {
        return Ok(caller);
    };
    match deny.verdict(user.as_str(), device) {
        Verdict::Allowed => Ok(caller),
        Verdict::DeviceRevoked => Err((
            Status::permission_denied(format!(
                "{} may not call {}: this device ({}) was removed by its user; its \
                 certificate is revoked",
                id.short(),
                spec.name,
                device.unwrap_or_default()
            )),
            Some((id.clone(), spec)),
        )),
        Verdict::Disabled => Err((
            Status::permission_denied(format!(
                "{} may not call {}: user disabled by an operator",
                id.short(),
                spec.name
            )),
            Some((id.clone(), spec)),
        )),
        Verdict::Stale(why) => Err((Status::unavailable(why), None)),
    }
}

/// Where refusals of identified callers are recorded.
pub trait RefusalAudit: Send + Sync + 'static {
    /// Records that `caller` was refused `rpc` with `message`. Best effort:
    /// a failure to record is logged and never changes the refusal.
    fn refused(
        &self,
        caller: Identity,
        rpc: &'static RpcSpec,
        message: String,
    ) -> BoxFuture<(), Infallible>;
}

/// Audits nothing: for listeners whose refusals have nowhere to go (tests
/// of the layer itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAudit;

impl RefusalAudit for NoAudit {
    fn refused(&self, _: Identity, _: &'static RpcSpec, _: String) -> BoxFuture<(), Infallible> {
        Box::pin(async { Ok(()) })
    }
}

/// The authorization layer (`Server::layer`).
#[derive(Clone)]
pub struct AuthorizeLayer {
    table: RpcTable,
    audit: Arc<dyn RefusalAudit>,
    deny: Option<Arc<DenyList>>,
}

impl AuthorizeLayer {
    /// Authorizes against `table` (the mesh's is `sesphr::rpc::TABLE`).
    pub fn new(table: RpcTable, audit: Arc<dyn RefusalAudit>) -> Self {
        Self {
            table,
            audit,
            deny: None,
        }
    }

    /// Also refuses the users `deny` lists (see [`screen`]).
    pub fn with_deny_list(mut self, deny: Arc<DenyList>) -> Self {
        self.deny = Some(deny);
        self
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            table: self.table,
            audit: self.audit.clone(),
            deny: self.deny.clone(),
        }
    }
}

/// A service behind the authorization layer.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    table: RpcTable,
    audit: Arc<dyn RefusalAudit>,
    deny: Option<Arc<DenyList>>,
}

impl<S> Authorize<S> {
    /// The decision for one request on a verified connection: the
    /// certificate still valid, the table's row, then the deny list.
    fn admit(&self, path: &str, info: &PeerInfo) -> Result<Caller, Refusal> {
        // The identity was read at the handshake; a connection must not
        // outlive its certificate.
        if let Some((_, not_after)) = info.validity
            && crate::unix_now() >= not_after
        {
            return Err((
                Status::unauthenticated(format!(
                    "client certificate expired at {not_after} (unix seconds) during this \
                     connection: renew before it expires (`sesphr renew`); once expired, \
                     re-enrol (`sesphr reenroll`), which keeps the user id and its grants"
                )),
                None,
            ));
        }
        let spec = row(&self.table, path)?;
        let caller = decide_row(spec, &info.identity)?;
        match (&self.deny, info.identity.as_ref()) {
            (Some(deny), PeerIdentity::Verified(id)) => {
                screen(deny, caller, id, info.device.as_deref(), spec)
            }
            _ => Ok(caller),
        }
    }
}

impl<S> Service<http::Request<Body>> for Authorize<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is not necessarily ready; the ready one goes to work.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // A request without connect info did not come through
        // `transport::incoming_tls`: fail closed.
        let decision = match req.extensions().get::<PeerInfo>() {
            Some(info) => self.admit(req.uri().path(), info),
            None => Err((
                Status::unauthenticated("no verified connection information"),
                None,
            )),
        };
        match decision {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(inner.call(req))
            }
            Err((status, audited)) => {
                let audit = self.audit.clone();
                Box::pin(async move {
                    if let Some((id, spec)) = audited {
                        tracing::info!(caller = %id.short(), rpc = spec.name, "refused by the RPC table or the deny list");
                        let _ = audit.refused(id, spec, status.message().to_owned()).await;
                    }
                    Ok(status.into_http())
                })
            }
        }
    }
}

/// The caller the authorization layer established for this request.
///
/// Missing only if the service was mounted without the layer; that is
/// refused (`INTERNAL`), never served.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        tracing::error!("request reached a handler without the authorization layer");
        Status::internal("request was not authorized")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesphr::rpc::{Cost, Scope, TABLE};
    use sesphr_identity::Service as Svc;

    const TD: &str = "sesphr.local";

    fn verified(id: Identity) -> PeerIdentity {
        PeerIdentity::Verified(id)
    }

    #[test]
    fn table_examples() {
        let alice = Identity::user(TD, Role::Patient, "alice").unwrap();
        let bob = Identity::user(TD, Role::Doctor, "bob").unwrap();
        let cloud = Identity::service(TD, Svc::CloudStorage);
        let policy = Identity::service(TD, Svc::AccessPolicy);
        let ops = Identity::operator(TD, "ops").unwrap();
        assert!(is_allowed(Rpc::PutRecord, &alice));
        assert!(!is_allowed(Rpc::PutRecord, &bob));
        assert!(!is_allowed(Rpc::Check, &alice));
        assert!(is_allowed(Rpc::Check, &cloud));
        assert!(!is_allowed(Rpc::Check, &policy));
        assert!(
            !is_allowed(Rpc::GetRecord, &ops),
            "operators never read records"
        );
        assert!(is_allowed(Rpc::ListAudit, &ops));
        assert!(is_allowed(Rpc::Health, &ops));
    }

    #[test]
    fn decisions_name_the_caller_or_the_reason() {
        let alice = Identity::user(TD, Role::Patient, "alice").unwrap();
        let caller = decide(
            &TABLE,
            "/sesphr.v1.CloudStorage/PutRecord",
            &verified(alice.clone()),
        )
        .unwrap();
        assert_eq!(caller, Caller::Patient("alice".parse().unwrap()));
        let (status, audited) = decide(
            &TABLE,
            "/sesphr.v1.AccessPolicy/Check",
            &verified(alice.clone()),
        )
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("patient/alice may not call"),
            "{status:?}"
        );
        assert_eq!(audited.unwrap().0, alice);
        // Enrollment alone admits a caller without a certificate.
        assert_eq!(
            decide(
                &TABLE,
                "/sesphr.v1.Srs/Enroll",
                &PeerIdentity::NoCertificate
            )
            .unwrap(),
            Caller::Anonymous
        );
        let (status, audited) = decide(
            &TABLE,
            "/sesphr.v1.Srs/GetUser",
            &PeerIdentity::NoCertificate,
        )
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(audited.is_none(), "nobody to attribute it to");
        let (status, _) = decide(
            &TABLE,
            "/sesphr.v1.Srs/GetUser",
            &PeerIdentity::Rejected("client certificate is for trust domain \"x\"".into()),
        )
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let (status, _) = decide(&TABLE, "/sesphr.v1.Srs/Nope", &verified(alice)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }

    /// A row added to a table is enforced by the layer, counted by the
    /// limits and printed in the docs table, with no other list to update.
    #[tokio::test]
    async fn a_new_row_is_picked_up_by_every_consumer() {
        use crate::limits::{Limited, Limits};
        use std::sync::Mutex;

        const FAKE: RpcSpec = RpcSpec {
            name: "sesphr.v1.Fake/Ping",
            scope: Scope::Method,
            callers: &[CallerClass::Operator],
            cost: Cost::Expensive,
        };
        let rows: Vec<RpcSpec> = TABLE.rows().iter().copied().chain([FAKE]).collect();
        let table = RpcTable(Box::leak(rows.into_boxed_slice()));

        // Docs.
        assert!(
            table
                .markdown()
                .contains("| `sesphr.v1.Fake/Ping` | operator | limited |")
        );
        assert!(!TABLE.markdown().contains("Fake"));

        // Authorization: the handler sees the typed caller.
        #[derive(Default)]
        struct Recorder(Mutex<Vec<(Identity, &'static str)>>);
        impl RefusalAudit for Recorder {
            fn refused(
                &self,
                c: Identity,
                rpc: &'static RpcSpec,
                _: String,
            ) -> BoxFuture<(), Infallible> {
                self.0.lock().unwrap().push((c, rpc.name));
                Box::pin(async { Ok(()) })
            }
        }
        let recorder = Arc::new(Recorder::default());
        let seen = Arc::new(Mutex::new(Vec::<Caller>::new()));
        let handler = {
            let seen = seen.clone();
            tower::service_fn(move |req: http::Request<Body>| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(req.extensions().get::<Caller>().unwrap().clone());
                    Ok::<_, Infallible>(http::Response::new(Body::empty()))
                }
            })
        };
        let limits = Limits {
            rate: 0.001,
            burst: 1,
            ..Limits::default()
        };
        let limited = Limited::with_table(handler, limits, "fake", table);
        let mut svc = tower::Layer::layer(&AuthorizeLayer::new(table, recorder.clone()), limited);

        let request = |id: Identity| {
            let mut req = http::Request::builder()
                .uri("http://mesh/sesphr.v1.Fake/Ping")
                .body(Body::empty())
                .unwrap();
            req.extensions_mut().insert(PeerInfo {
                tcp: tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: None,
                },
                identity: Arc::new(PeerIdentity::Verified(id)),
                validity: None,
                device: None,
            });
            req
        };
        let grpc_status =
            |resp: &http::Response<Body>| Status::from_header_map(resp.headers()).map(|s| s.code());
        let ops = Identity::operator(TD, "ops").unwrap();
        let alice = Identity::user(TD, Role::Patient, "alice").unwrap();

        let resp = Service::call(&mut svc, request(alice.clone()))
            .await
            .unwrap();
        assert_eq!(grpc_status(&resp), Some(tonic::Code::PermissionDenied));
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            &[(alice, "sesphr.v1.Fake/Ping")]
        );

        let resp = Service::call(&mut svc, request(ops.clone())).await.unwrap();
        assert_eq!(grpc_status(&resp), None, "admitted");
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            &[Caller::Operator("ops".parse().unwrap())]
        );

        // Limits: the row is expensive, the burst is one call.
        let resp = Service::call(&mut svc, request(ops)).await.unwrap();
        assert_eq!(grpc_status(&resp), Some(tonic::Code::ResourceExhausted));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
