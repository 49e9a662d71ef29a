//! The one table of every RPC the mesh serves.
//!
//! Each row names a method path, the classes of callers that may call it at
//! all, and its cost class. Everything that treats RPCs differently reads
//! this table, never a list of its own:
//!
//! - the authorization layer of `sesphr-mesh` refuses a caller whose class
//!   is not in the row (and a path with no row at all);
//! - the per-identity limits count calls whose row is [`Cost::Expensive`];
//! - the audit log names an RPC by [`Rpc::audit_action`];
//! - `ARCHITECTURE.md` prints [`table_markdown`] (a test keeps it in sync).
//!
//! The layer and the limits take the table as a value ([`RpcTable`]), so a
//! test can add a fake row and watch every consumer pick it up.

use std::fmt;

use sesphr_identity::Service;

/// Every RPC of the mesh, plus the standard health and reflection services.
/// The discriminant is the row's index in [`TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `CloudStorage/PutRecord`: an owner uploads a record.
    PutRecord,
    /// `CloudStorage/GetRecord`: an owner or grantee downloads one.
    GetRecord,
    /// `CloudStorage/ListRecords`: the records a caller may see.
    ListRecords,
    /// `CloudStorage/DeleteRecord`: an owner deletes a record.
    DeleteRecord,
    /// `CloudStorage/QueryBlob`: whether a deduplicated blob exists (and its challenge).
    QueryBlob,
    /// `Srs/Enroll`: a new user gets a certificate.
    Enroll,
    /// `Srs/Invite`: an operator (any role) or a patient (family, friends) invites one user.
    Invite,
    /// `Srs/Renew`: a user renews its certificate.
    Renew,
    /// `Srs/GetUser`: a user's public keys.
    GetUser,
    /// `Srs/ListDevices`: a user's enrolled devices.
    ListDevices,
    /// `Srs/RemoveDevice`: a user revokes one of its devices.
    RemoveDevice,
    /// `Srs/SetRecovery`: a user stores trustee shares of its master secret.
    SetRecovery,
    /// `Srs/GetRecovery`: a user's own recovery setup (no shares).
    GetRecovery,
    /// `Srs/GetRecoveryShare`: a trustee fetches the share sealed to it.
    GetRecoveryShare,
    /// `SrsNode/PutKfrag`: an owner stores one node's re-encryption key fragment.
    PutKfrag,
    /// `SrsNode/DeleteKfrags`: an owner removes them.
    DeleteKfrags,
    /// `SrsNode/ReEncrypt`: a grantee gets one node's capsule fragments.
    ReEncrypt,
    /// `SrsNode/EvaluateContentKey`: one node's share of the dedup OPRF.
    EvaluateContentKey,
    /// `AccessPolicy/Grant`.
    Grant,
    /// `AccessPolicy/Revoke`.
    Revoke,
    /// `AccessPolicy/Check`: a service asks whether a grantee may act.
    Check,
    /// `AccessPolicy/ListGrants`.
    ListGrants,
    /// `AccessPolicy/ListAudit`.
    ListAudit,
    /// `AccessPolicy/VerifyAudit`.
    VerifyAudit,
    /// `AccessPolicy/GetCheckpoint`: the newest witnessed tree head.
    GetCheckpoint,
    /// `AccessPolicy/GetInclusionProofs`: audit paths of listed entries.
    GetInclusionProofs,
    /// `AccessPolicy/GetConsistencyProof`: one tree head extends another.
    GetConsistencyProof,
    /// `AccessPolicy/AddCosignature`: a witness cosigns a checkpoint.
    AddCosignature,
    /// `AccessPolicy/RecordEvent`: a service appends an audit event.
    RecordEvent,
    /// `AccessPolicy/DisableUser`: an operator disables a user.
    DisableUser,
    /// `AccessPolicy/EnableUser`: an operator enables it again.
    EnableUser,
    /// `AccessPolicy/GetDenyList`: the services learn who is disabled.
    GetDenyList,
    /// `AccessPolicy/RevokeDevice`: the SRS revokes a removed device's certificates.
    RevokeDevice,
    /// `grpc.health.v1.Health/*`
    Health,
    /// `grpc.reflection.*`
    Reflection,
}

/// What a call costs the server: whether the per-identity limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Answered from memory or one small read.
    Cheap,
    /// Streams record bytes, fsyncs, checks signatures or proofs, walks the
    /// audit log, probes someone's data, or asks AccessPolicy.
    Expensive,
}

/// A class of callers, as the table names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerClass {
    /// A patient (`/patient/<id>`).
    Patient,
    /// Any practitioner role, private or public domain (`/practitioner/<role>/<id>`).
    Practitioner,
    /// One mesh service (`/service/<name>`).
    Service(Service),
    /// Any re-encryption node (`/service/srs-node/<i>`).
    SrsNode,
    /// A mesh operator (`/operator/<id>`).
    Operator,
    /// Any caller, even without a client certificate (enrollment only).
    Anyone,
}

impl fmt::Display for CallerClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerClass::Patient => f.write_str("patient"),
            CallerClass::Practitioner => f.write_str("practitioner"),
            CallerClass::Service(s) => write!(f, "service/{s}"),
            CallerClass::SrsNode => f.write_str("service/srs-node/*"),
            CallerClass::Operator => f.write_str("operator"),
            CallerClass::Anyone => f.write_str("anyone"),
        }
    }
}

/// How a row matches request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Exactly `/<name>`.
    Method,
    /// Every method of every service whose name starts with `<name>`
    /// (`grpc.reflection` covers `v1` and `v1alpha`).
    Services,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcSpec {
    /// `package.Service/Method`, or a service-name prefix for [`Scope::Services`].
    pub name: &'static str,
    /// How `name` matches request paths.
    pub scope: Scope,
    /// Who may call it at all; finer rules (owner only, grants) follow in
    /// the service.
    pub callers: &'static [CallerClass],
    /// Whether the per-identity limits count it.
    pub cost: Cost,
}

impl RpcSpec {
    /// Whether this row covers the HTTP/2 request `path` (`/pkg.Svc/Method`).
    pub fn matches(&self, path: &str) -> bool {
        let Some(method) = path.strip_prefix('/') else {
            return false;
        };
        match self.scope {
            Scope::Method => method == self.name,
            Scope::Services => method
                .strip_prefix(self.name)
                .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('.')),
        }
    }
}

use CallerClass::{Anyone, Operator, Patient, Practitioner};
const CLOUD: CallerClass = CallerClass::Service(Service::CloudStorage);
const SRS: CallerClass = CallerClass::Service(Service::Srs);
const POLICY: CallerClass = CallerClass::Service(Service::AccessPolicy);
const NODE: CallerClass = CallerClass::SrsNode;
const ANY_AUTHENTICATED: &[CallerClass] =
    &[Patient, Practitioner, CLOUD, SRS, NODE, POLICY, Operator];

const fn method(name: &'static str, callers: &'static [CallerClass], cost: Cost) -> RpcSpec {
    RpcSpec {
        name,
        scope: Scope::Method,
        callers,
        cost,
    }
}

use Cost::{Cheap, Expensive};

/// The table, in [`Rpc`] order.
///
/// Cost: Check and RecordEvent are called by services only (exempt from the
/// limits anyway); ListGrants is one prefix scan; health and reflection are
/// served from memory. Everything else streams, fsyncs, verifies or asks
/// AccessPolicy.
pub const TABLE: RpcTable = RpcTable(&[
    method("sesphr.v1.CloudStorage/PutRecord", &[Patient], Expensive),
    method(
        "sesphr.v1.CloudStorage/GetRecord",
        &[Patient, Practitioner],
        Expensive,
    ),
    method(
        "sesphr.v1.CloudStorage/ListRecords",
        &[Patient, Practitioner],
        Expensive,
    ),
    method("sesphr.v1.CloudStorage/DeleteRecord", &[Patient], Expensive),
    method("sesphr.v1.CloudStorage/QueryBlob", &[Patient], Expensive),
    method("sesphr.v1.Srs/Enroll", &[Anyone], Expensive),
    method("sesphr.v1.Srs/Invite", &[Patient, Operator], Expensive),
    method("sesphr.v1.Srs/Renew", &[Patient, Practitioner], Expensive),
    method("sesphr.v1.Srs/GetUser", ANY_AUTHENTICATED, Expensive),
    method(
        "sesphr.v1.Srs/ListDevices",
        &[Patient, Practitioner],
        Expensive,
    ),
    method(
        "sesphr.v1.Srs/RemoveDevice",
        &[Patient, Practitioner],
        Expensive,
    ),
    method(
        "sesphr.v1.Srs/SetRecovery",
        &[Patient, Practitioner],
        Expensive,
    ),
    method(
        "sesphr.v1.Srs/GetRecovery",
        &[Patient, Practitioner],
        Expensive,
    ),
    method(
        "sesphr.v1.Srs/GetRecoveryShare",
        &[Patient, Practitioner],
        Expensive,
    ),
    method("sesphr.v1.SrsNode/PutKfrag", &[Patient], Expensive),
    method("sesphr.v1.SrsNode/DeleteKfrags", &[Patient], Expensive),
    method(
        "sesphr.v1.SrsNode/ReEncrypt",
        &[Patient, Practitioner],
        Expensive,
    ),
    method(
        "sesphr.v1.SrsNode/EvaluateContentKey",
        &[Patient],
        Expensive,
    ),
    method("sesphr.v1.AccessPolicy/Grant", &[Patient], Expensive),
    method("sesphr.v1.AccessPolicy/Revoke", &[Patient], Expensive),
    method("sesphr.v1.AccessPolicy/Check", &[CLOUD, SRS, NODE], Cheap),
    method(
        "sesphr.v1.AccessPolicy/ListGrants",
        &[Patient, Practitioner],
        Cheap,
    ),
    method(
        "sesphr.v1.AccessPolicy/ListAudit",
        &[Patient, Operator],
        Expensive,
    ),
    method(
        "sesphr.v1.AccessPolicy/VerifyAudit",
        &[Patient, Operator],
        Expensive,
    ),
    method(
        "sesphr.v1.AccessPolicy/GetCheckpoint",
        ANY_AUTHENTICATED,
        Expensive,
    ),
    method(
        "sesphr.v1.AccessPolicy/GetInclusionProofs",
        &[Patient, Operator],
        Expensive,
    ),
    method(
        "sesphr.v1.AccessPolicy/GetConsistencyProof",
        ANY_AUTHENTICATED,
        Expensive,
    ),
    method(
        "sesphr.v1.AccessPolicy/AddCosignature",
        &[CLOUD, NODE],
        Expensive,
    ),
    method(
        "sesphr.v1.AccessPolicy/RecordEvent",
        &[CLOUD, SRS, NODE],
        Cheap,
    ),
    method("sesphr.v1.AccessPolicy/DisableUser", &[Operator], Expensive),
    method("sesphr.v1.AccessPolicy/EnableUser", &[Operator], Expensive),
    method(
        "sesphr.v1.AccessPolicy/GetDenyList",
        &[CLOUD, SRS, NODE],
        Cheap,
    ),
    method("sesphr.v1.AccessPolicy/RevokeDevice", &[SRS], Expensive),
    RpcSpec {
        name: "grpc.health.v1.Health",
        scope: Scope::Services,
        callers: ANY_AUTHENTICATED,
        cost: Cheap,
    },
    RpcSpec {
        name: "grpc.reflection",
        scope: Scope::Services,
        callers: ANY_AUTHENTICATED,
        cost: Cheap,
    },
]);

/// A table of RPC rows: [`TABLE`] in production, a longer one in tests.
#[derive(Debug, Clone, Copy)]
pub struct RpcTable(pub &'static [RpcSpec]);

impl RpcTable {
    /// The row covering an HTTP/2 request path, if any.
    pub fn lookup(&self, path: &str) -> Option<&'static RpcSpec> {
        self.0.iter().find(|spec| spec.matches(path))
    }

    /// Every row, in order.
    pub fn rows(&self) -> &'static [RpcSpec] {
        self.0
    }

    /// The table as Markdown (`ARCHITECTURE.md` prints it).
    pub fn markdown(&self) -> String {
        let mut out = String::from("| RPC | allowed callers | cost |\n|---|---|---|\n");
        for spec in self.0 {
            let names: Vec<String> = spec.callers.iter().map(|c| c.to_string()).collect();
            let cost = match spec.cost {
                Cheap => "cheap",
                Expensive => "limited",
            };
            out.push_str(&format!(
                "| `{}` | {} | {cost} |\n",
                spec.name,
                names.join(", ")
            ));
        }
        out
    }
}

/// [`TABLE`] as Markdown, for `ARCHITECTURE.md`.
pub fn table_markdown() -> String {
    TABLE.markdown()
}

impl Rpc {
    /// Every RPC, in table order.
    pub const ALL: [Rpc; 35] = [
        Rpc::PutRecord,
        Rpc::GetRecord,
        Rpc::ListRecords,
        Rpc::DeleteRecord,
        Rpc::QueryBlob,
        Rpc::Enroll,
        Rpc::Invite,
        Rpc::Renew,
        Rpc::GetUser,
        Rpc::ListDevices,
        Rpc::RemoveDevice,
        Rpc::SetRecovery,
        Rpc::GetRecovery,
        Rpc::GetRecoveryShare,
        Rpc::PutKfrag,
        Rpc::DeleteKfrags,
        Rpc::ReEncrypt,
        Rpc::EvaluateContentKey,
        Rpc::Grant,
        Rpc::Revoke,
        Rpc::Check,
        Rpc::ListGrants,
        Rpc::ListAudit,
        Rpc::VerifyAudit,
        Rpc::GetCheckpoint,
        Rpc::GetInclusionProofs,
        Rpc::GetConsistencyProof,
        Rpc::AddCosignature,
        Rpc::RecordEvent,
        Rpc::DisableUser,
        Rpc::EnableUser,
        Rpc::GetDenyList,
        Rpc::RevokeDevice,
        Rpc::Health,
        Rpc::Reflection,
    ];

    /// This RPC's row of [`TABLE`].
    pub fn spec(self) -> &'static RpcSpec {
        &TABLE.0[self as usize]
    }

    /// `package.Service/Method` (or the service prefix for health and
    /// reflection), for messages and logs.
    pub fn method(self) -> &'static str {
        self.spec().name
    }

    /// This RPC's cost class.
    pub fn cost(self) -> Cost {
        self.spec().cost
    }

    /// The caller classes that may call it at all.
    pub fn callers(self) -> &'static [CallerClass] {
        self.spec().callers
    }

    /// The action the audit log records for a call of this RPC.
    pub fn audit_action(self) -> &'static str {
        self.method()
    }

    /// The RPC an HTTP/2 request path (`/package.Service/Method`) names.
    pub fn from_path(path: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|rpc| rpc.spec().matches(path))
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_enum_order_and_unique() {
        assert_eq!(TABLE.0.len(), Rpc::ALL.len());
        for (i, rpc) in Rpc::ALL.into_iter().enumerate() {
            assert_eq!(rpc as usize, i, "{rpc:?} out of order");
        }
        for (i, a) in TABLE.0.iter().enumerate() {
            for b in &TABLE.0[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    /// Every method the protos define has a row, so none can be served
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
        assert_eq!(Rpc::from_path("/grpc.health.v1.HealthX/Check"), None);
    }

    #[test]
    fn service_names_are_the_table_prefixes() {
        for rpc in Rpc::ALL {
            if rpc.spec().scope == Scope::Method {
                let service = rpc.method().split('/').next().unwrap();
                assert!(
                    crate::proto::service_names::ALL.contains(&service),
                    "{service}"
                );
            }
        }
    }
}
