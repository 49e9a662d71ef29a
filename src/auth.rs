//! Who may call what.
//!
//! The caller's identity is read only from the verified client certificate
//! that the TLS layer checked against the mesh CA; request fields never name
//! the caller. [`authorize`] is the first line of every handler: it reads the
//! identity and checks it against [`ALLOWED`], the table `ARCHITECTURE.md`
//! prints. Finer rules (owner-only, grant checks) follow in the handlers.

use std::fmt;

use sesphr_identity::{Identity, Principal, Role, Service, identity_from_cert_der};
use tonic::{Request, Status};

/// Every RPC of the mesh, plus the standard health and reflection services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    PutRecord,
    GetRecord,
    ListRecords,
    DeleteRecord,
    QueryBlob,
    Enroll,
    GetUser,
    PutKfrags,
    DeleteKfrags,
    ReEncrypt,
    EvaluateContentKey,
    Grant,
    Revoke,
    Check,
    ListGrants,
    ListAudit,
    VerifyAudit,
    RecordEvent,
    /// `grpc.health.v1.Health/*`
    Health,
    /// `grpc.reflection.*`
    Reflection,
}

impl Rpc {
    pub const ALL: [Rpc; 20] = [
        Rpc::PutRecord,
        Rpc::GetRecord,
        Rpc::ListRecords,
        Rpc::DeleteRecord,
        Rpc::QueryBlob,
        Rpc::Enroll,
        Rpc::GetUser,
        Rpc::PutKfrags,
        Rpc::DeleteKfrags,
        Rpc::ReEncrypt,
        Rpc::EvaluateContentKey,
        Rpc::Grant,
        Rpc::Revoke,
        Rpc::Check,
        Rpc::ListGrants,
        Rpc::ListAudit,
        Rpc::VerifyAudit,
        Rpc::RecordEvent,
        Rpc::Health,
        Rpc::Reflection,
    ];

    /// The gRPC method path, for messages and logs.
    pub fn method(self) -> &'static str {
        match self {
            Rpc::PutRecord => "sesphr.v1.CloudStorage/PutRecord",
            Rpc::GetRecord => "sesphr.v1.CloudStorage/GetRecord",
            Rpc::ListRecords => "sesphr.v1.CloudStorage/ListRecords",
            Rpc::DeleteRecord => "sesphr.v1.CloudStorage/DeleteRecord",
            Rpc::QueryBlob => "sesphr.v1.CloudStorage/QueryBlob",
            Rpc::Enroll => "sesphr.v1.Srs/Enroll",
            Rpc::GetUser => "sesphr.v1.Srs/GetUser",
            Rpc::PutKfrags => "sesphr.v1.Srs/PutKfrags",
            Rpc::DeleteKfrags => "sesphr.v1.Srs/DeleteKfrags",
            Rpc::ReEncrypt => "sesphr.v1.Srs/ReEncrypt",
            Rpc::EvaluateContentKey => "sesphr.v1.Srs/EvaluateContentKey",
            Rpc::Grant => "sesphr.v1.AccessPolicy/Grant",
            Rpc::Revoke => "sesphr.v1.AccessPolicy/Revoke",
            Rpc::Check => "sesphr.v1.AccessPolicy/Check",
            Rpc::ListGrants => "sesphr.v1.AccessPolicy/ListGrants",
            Rpc::ListAudit => "sesphr.v1.AccessPolicy/ListAudit",
            Rpc::VerifyAudit => "sesphr.v1.AccessPolicy/VerifyAudit",
            Rpc::RecordEvent => "sesphr.v1.AccessPolicy/RecordEvent",
            Rpc::Health => "grpc.health.v1.Health",
            Rpc::Reflection => "grpc.reflection",
        }
    }
}

/// What a call costs the server: whether the per-identity limits of
/// [`crate::limits`] count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Answered from memory or one small read.
    Cheap,
    /// Streams record bytes, fsyncs, checks signatures or proofs, walks the
    /// audit log, probes someone's data, or asks AccessPolicy.
    Expensive,
}

impl Rpc {
    /// The cost class of each RPC. An exhaustive match: a new RPC does not
    /// compile until someone decides whether it is limited.
    pub fn cost(self) -> Cost {
        match self {
            Rpc::PutRecord
            | Rpc::GetRecord
            | Rpc::ListRecords
            | Rpc::DeleteRecord
            | Rpc::QueryBlob
            | Rpc::Enroll
            | Rpc::GetUser
            | Rpc::PutKfrags
            | Rpc::DeleteKfrags
            | Rpc::ReEncrypt
            | Rpc::EvaluateContentKey
            | Rpc::Grant
            | Rpc::Revoke
            | Rpc::ListAudit
            | Rpc::VerifyAudit => Cost::Expensive,
            // Check and RecordEvent are called by services only (exempt);
            // ListGrants is one prefix scan; health and reflection are
            // served from memory.
            Rpc::Check | Rpc::ListGrants | Rpc::RecordEvent | Rpc::Health | Rpc::Reflection => {
                Cost::Cheap
            }
        }
    }

    /// The RPC an HTTP/2 request path (`/package.Service/Method`) names.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path.strip_prefix('/')?;
        Rpc::ALL.into_iter().find(|rpc| match rpc {
            // Whole services: every method under the prefix.
            Rpc::Health | Rpc::Reflection => method
                .strip_prefix(rpc.method())
                .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('.')),
            _ => method == rpc.method(),
        })
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method())
    }
}

/// A class of callers, as the authorization table names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A patient (`/patient/<id>`).
    Patient,
    /// Any practitioner role, private or public domain (`/practitioner/<role>/<id>`).
    Practitioner,
    /// One mesh service (`/service/<name>`).
    Service(Service),
    /// A mesh operator (`/operator/<id>`).
    Operator,
    /// Any caller, even without a client certificate (enrollment only).
    Anyone,
}

impl Caller {
    fn matches(self, id: &Identity) -> bool {
        match (self, &id.principal) {
            (Caller::Anyone, _) => true,
            (Caller::Patient, Principal::User { role, .. }) => *role == Role::Patient,
            (Caller::Practitioner, Principal::User { role, .. }) => *role != Role::Patient,
            (Caller::Service(s), Principal::Service(t)) => s == *t,
            (Caller::Operator, Principal::Operator(_)) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Patient => f.write_str("patient"),
            Caller::Practitioner => f.write_str("practitioner"),
            Caller::Service(s) => write!(f, "service/{s}"),
            Caller::Operator => f.write_str("operator"),
            Caller::Anyone => f.write_str("anyone"),
        }
    }
}

use Caller::{Anyone, Operator, Patient, Practitioner};
const CLOUD: Caller = Caller::Service(Service::CloudStorage);
const SRS: Caller = Caller::Service(Service::Srs);
const POLICY: Caller = Caller::Service(Service::AccessPolicy);
const ANY_AUTHENTICATED: &[Caller] = &[Patient, Practitioner, CLOUD, SRS, POLICY, Operator];

/// The authorization table: which callers may call each RPC at all.
/// `ARCHITECTURE.md` prints this table; `tests/authorization.rs` walks it
/// against live servers.
pub const ALLOWED: &[(Rpc, &[Caller])] = &[
    (Rpc::PutRecord, &[Patient]),
    (Rpc::GetRecord, &[Patient, Practitioner]),
    (Rpc::ListRecords, &[Patient, Practitioner]),
    (Rpc::DeleteRecord, &[Patient]),
    (Rpc::QueryBlob, &[Patient]),
    (Rpc::Enroll, &[Anyone]),
    (Rpc::GetUser, ANY_AUTHENTICATED),
    (Rpc::PutKfrags, &[Patient]),
    (Rpc::DeleteKfrags, &[Patient]),
    (Rpc::ReEncrypt, &[Patient, Practitioner]),
    (Rpc::EvaluateContentKey, &[Patient]),
    (Rpc::Grant, &[Patient]),
    (Rpc::Revoke, &[Patient]),
    (Rpc::Check, &[CLOUD, SRS]),
    (Rpc::ListGrants, &[Patient, Practitioner]),
    (Rpc::ListAudit, &[Patient, Operator]),
    (Rpc::VerifyAudit, &[Patient, Operator]),
    (Rpc::RecordEvent, &[CLOUD, SRS]),
    (Rpc::Health, ANY_AUTHENTICATED),
    (Rpc::Reflection, ANY_AUTHENTICATED),
];

/// The callers the table allows for `rpc`.
pub fn allowed_callers(rpc: Rpc) -> &'static [Caller] {
    ALLOWED
        .iter()
        .find(|(r, _)| *r == rpc)
        .map(|(_, c)| *c)
        .unwrap_or(&[])
}

/// Whether the table lets `id` call `rpc`.
pub fn is_allowed(rpc: Rpc, id: &Identity) -> bool {
    allowed_callers(rpc).iter().any(|c| c.matches(id))
}

/// The verified identity of the peer, if it presented a client certificate.
///
/// `Ok(None)` means no certificate (possible only on listeners where client
/// certificates are optional, i.e. the SRS for enrollment).
pub fn peer_identity<T>(req: &Request<T>, trust_domain: &str) -> Result<Option<Identity>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    let id = identity_from_cert_der(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("client certificate rejected: {e}")))?;
    if id.trust_domain != trust_domain {
        return Err(Status::unauthenticated(format!(
            "client certificate is for trust domain {:?}, this mesh is {:?}",
            id.trust_domain, trust_domain
        )));
    }
    Ok(Some(id))
}

/// Reads the caller's identity and checks the authorization table.
pub fn authorize<T>(req: &Request<T>, rpc: Rpc, trust_domain: &str) -> Result<Identity, Status> {
    let id = peer_identity(req, trust_domain)?.ok_or_else(|| {
        Status::unauthenticated(format!(
            "{rpc} requires a client certificate from the mesh CA"
        ))
    })?;
    if is_allowed(rpc, &id) {
        Ok(id)
    } else {
        let allowed: Vec<String> = allowed_callers(rpc).iter().map(|c| c.to_string()).collect();
        Err(Status::permission_denied(format!(
            "{} may not call {rpc} (allowed: {})",
            id.short(),
            allowed.join(", ")
        )))
    }
}

/// Renders the table as Markdown (for `ARCHITECTURE.md`; a test keeps the
/// document in sync with the code).
pub fn table_markdown() -> String {
    let mut out = String::from("| RPC | allowed callers | cost |\n|---|---|---|\n");
    for (rpc, callers) in ALLOWED {
        let names: Vec<String> = callers.iter().map(|c| c.to_string()).collect();
        let cost = match rpc.cost() {
            Cost::Cheap => "cheap",
            Cost::Expensive => "limited",
        };
        out.push_str(&format!(
            "| `{}` | {} | {cost} |\n",
            rpc.method(),
            names.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_exactly_one_row() {
        for rpc in Rpc::ALL {
            let rows = ALLOWED.iter().filter(|(r, _)| *r == rpc).count();
            assert_eq!(rows, 1, "{rpc}");
        }
        assert_eq!(ALLOWED.len(), Rpc::ALL.len());
    }

    /// Every method the protos define is in the table, so none can be served
    /// unclassified (unauthorized or unlimited).
    #[test]
    fn every_proto_method_is_a_table_row() {
        use prost::Message;
        let set =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for m in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                    let rpc = Rpc::from_path(&path).unwrap_or_else(|| panic!("{path} has no row"));
                    assert_eq!(format!("/{}", rpc.method()), path);
                    methods += 1;
                }
            }
        }
        assert_eq!(methods, Rpc::ALL.len() - 2, "health and reflection aside");
        assert_eq!(
            Rpc::from_path("/grpc.health.v1.Health/Watch"),
            Some(Rpc::Health)
        );
        assert_eq!(
            Rpc::from_path("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some(Rpc::Reflection)
        );
        assert_eq!(Rpc::from_path("/sesphr.v1.Srs/ReEncryptMore"), None);
        assert_eq!(Rpc::from_path("sesphr.v1.Srs/ReEncrypt"), None);
    }

    #[test]
    fn table_examples() {
        let td = "sesphr.local";
        let alice = Identity::user(td, Role::Patient, "alice").unwrap();
        let bob = Identity::user(td, Role::Doctor, "bob").unwrap();
        let cloud = Identity::service(td, Service::CloudStorage);
        let policy = Identity::service(td, Service::AccessPolicy);
        let ops = Identity::operator(td, "ops").unwrap();
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
}
