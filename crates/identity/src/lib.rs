//! Who is calling, and what names look like.
//!
//! Every SeSPHR component identifies a caller by the SPIFFE-style URI SAN of
//! its verified client certificate — never by a request field. This crate owns
//! that URI syntax, the user roles, and the syntax of user ids and partition
//! names, so the services, the client SDK and the PKI all agree on them.
//!
//! ```
//! use sesphr_identity::{Identity, Principal, Role};
//!
//! let id: Identity = "spiffe://sesphr.local/practitioner/doctor/bob".parse().unwrap();
//! assert_eq!(id.principal, Principal::User { role: Role::Doctor, id: "bob".into() });
//! assert_eq!(id.to_string(), "spiffe://sesphr.local/practitioner/doctor/bob");
//! ```

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

mod caller;
mod cert;
mod ids;
mod names;

pub use caller::{Caller, witness_name_of_node};
pub use cert::identity_from_cert_der;
pub use ids::{PartitionName, RecordId, UserId};
pub use names::{
    MAX_DEVICE_NAME_LEN, MAX_PARTITION_LEN, MAX_RECORD_ID_LEN, MAX_USER_ID_LEN,
    STANDARD_PARTITIONS, validate_device_name, validate_partition, validate_record_id,
    validate_user_id,
};

/// The trust domain used by `sesphrd dev` when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "sesphr.local";

/// Errors from parsing identities, roles, ids and partition names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "invalid user id {0:?}: expected 1-64 characters of [a-z0-9._-], starting with [a-z0-9]"
    )]
    /// A user id breaks its syntax.
    InvalidUserId(String),
    #[error("invalid partition {0:?}: expected 1-32 characters of [a-z0-9-]")]
    /// A partition name breaks its syntax.
    InvalidPartition(String),
    #[error(
        "{0:?} is not a valid record id: expected 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit"
    )]
    /// A record id breaks its syntax.
    InvalidRecordId(String),
    #[error("invalid device name {0:?}: expected 1-32 characters of [a-z0-9-]")]
    /// A device name breaks its syntax.
    InvalidDeviceName(String),
    #[error(
        "unknown role {0:?}: expected one of patient, doctor, nurse, pharmacist, insurer, researcher, family, friend, emergency"
    )]
    /// No such role.
    UnknownRole(String),
    #[error("invalid service name {0:?}: expected cloud-storage, srs, access-policy or srs-node")]
    /// No such service.
    InvalidService(String),
    #[error("invalid re-encryption node index {0:?}: expected 1 to {MAX_NODES}")]
    /// A node index out of range.
    InvalidNodeIndex(String),
    #[error("invalid identity URI {0:?}: {1}")]
    /// A SPIFFE URI that is not one of ours, and why.
    InvalidUri(String, &'static str),
    #[error("certificate carries no SPIFFE URI SAN")]
    /// The certificate names no identity.
    NoSpiffeSan,
    #[error("certificate carries more than one SPIFFE URI SAN")]
    /// The certificate names more than one identity.
    SeveralSpiffeSans,
    #[error("certificate could not be parsed")]
    /// The certificate is not valid DER X.509.
    BadCertificate,
}

/// A user's role. `Family` and `Friend` are the *private domain*; every
/// other role except `Patient` is the *public domain*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The record owner.
    Patient,
    /// A physician.
    Doctor,
    /// A nurse.
    Nurse,
    /// A pharmacist.
    Pharmacist,
    /// An insurer.
    Insurer,
    /// A researcher.
    Researcher,
    /// Family (private domain).
    Family,
    /// A friend (private domain).
    Friend,
    /// Emergency staff.
    Emergency,
}

/// Which side of the paper's private/public split a user belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The record owner.
    Owner,
    /// Family and friends.
    Private,
    /// Doctors, nurses, pharmacists, insurers, researchers, emergency staff.
    Public,
}

impl Role {
    /// Every role, in wire order.
    pub const ALL: [Role; 9] = [
        Role::Patient,
        Role::Doctor,
        Role::Nurse,
        Role::Pharmacist,
        Role::Insurer,
        Role::Researcher,
        Role::Family,
        Role::Friend,
        Role::Emergency,
    ];

    /// The role as it appears in URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Doctor => "doctor",
            Role::Nurse => "nurse",
            Role::Pharmacist => "pharmacist",
            Role::Insurer => "insurer",
            Role::Researcher => "researcher",
            Role::Family => "family",
            Role::Friend => "friend",
            Role::Emergency => "emergency",
        }
    }

    /// The role's side of the private/public split.
    pub fn domain(self) -> Domain {
        match self {
            Role::Patient => Domain::Owner,
            Role::Family | Role::Friend => Domain::Private,
            _ => Domain::Public,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_owned()))
    }
}

/// The three mesh services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// CloudStorage: ciphertext records.
    CloudStorage,
    /// The setup and re-encryption server.
    Srs,
    /// AccessPolicy: grants and the audit log.
    AccessPolicy,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 3] = [Service::CloudStorage, Service::Srs, Service::AccessPolicy];

    /// The service name as it appears in URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::CloudStorage => "cloud-storage",
            Service::Srs => "srs",
            Service::AccessPolicy => "access-policy",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::InvalidService(s.to_owned()))
    }
}

/// Most re-encryption nodes a mesh may run.
pub const MAX_NODES: u8 = 16;

/// Which re-encryption node (1..=[`MAX_NODES`]): the `x` at which the node's
/// key-fragment and OPRF-key shares are evaluated, and the last segment of
/// its identity `spiffe://<td>/service/srs-node/<i>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIndex(u8);

impl NodeIndex {
    /// The index `i`, if `1 <= i <= MAX_NODES`.
    pub fn new(i: u32) -> Result<Self, IdentityError> {
        match u8::try_from(i) {
            Ok(i) if (1..=MAX_NODES).contains(&i) => Ok(NodeIndex(i)),
            _ => Err(IdentityError::InvalidNodeIndex(i.to_string())),
        }
    }

    /// The index as a number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The node's name in files and logs: `srs-node-<i>`.
    pub fn name(self) -> String {
        format!("srs-node-{}", self.0)
    }
}

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for NodeIndex {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Canonical decimal only, so one node has one name.
        if s.is_empty()
            || s.len() > 2
            || s.starts_with('0')
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(IdentityError::InvalidNodeIndex(s.to_owned()));
        }
        NodeIndex::new(
            s.parse()
                .map_err(|_| IdentityError::InvalidNodeIndex(s.to_owned()))?,
        )
    }
}

/// What kind of principal an identity names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A patient or practitioner (`/patient/<id>`, `/practitioner/<role>/<id>`).
    /// A patient or practitioner (`/patient/<id>`, `/practitioner/<role>/<id>`).
    User {
        /// The role its certificate names.
        role: Role,
        /// The user id.
        id: String,
    },
    /// A mesh service (`/service/<name>`).
    Service(Service),
    /// One re-encryption node of the SRS (`/service/srs-node/<i>`).
    SrsNode(NodeIndex),
    /// A human operator (`/operator/<id>`): may inspect, never read records.
    Operator(String),
}

/// A verified caller: trust domain plus principal, printed as a SPIFFE URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The SPIFFE trust domain (one per mesh).
    pub trust_domain: String,
    /// Who, within it.
    pub principal: Principal,
}

impl Identity {
    /// A patient (`Role::Patient`) or practitioner identity; checks the id.
    pub fn user(trust_domain: &str, role: Role, id: &str) -> Result<Self, IdentityError> {
        validate_user_id(id)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            principal: Principal::User {
                role,
                id: id.to_owned(),
            },
        })
    }

    /// A mesh service's identity.
    pub fn service(trust_domain: &str, service: Service) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            principal: Principal::Service(service),
        }
    }

    /// Re-encryption node `index`'s identity.
    pub fn srs_node(trust_domain: &str, index: NodeIndex) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            principal: Principal::SrsNode(index),
        }
    }

    /// An operator's identity; checks the id.
    pub fn operator(trust_domain: &str, id: &str) -> Result<Self, IdentityError> {
        validate_user_id(id)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            principal: Principal::Operator(id.to_owned()),
        })
    }

    /// The user id and role, if this identity is a patient or practitioner.
    pub fn as_user(&self) -> Option<(Role, &str)> {
        match &self.principal {
            Principal::User { role, id } => Some((*role, id.as_str())),
            _ => None,
        }
    }

    /// The patient id, if this identity is a patient.
    pub fn as_patient(&self) -> Option<&str> {
        match self.as_user() {
            Some((Role::Patient, id)) => Some(id),
            _ => None,
        }
    }

    /// The service, if this identity is one.
    pub fn as_service(&self) -> Option<Service> {
        match &self.principal {
            Principal::Service(s) => Some(*s),
            _ => None,
        }
    }

    /// The node index, if this identity is a re-encryption node.
    pub fn as_srs_node(&self) -> Option<NodeIndex> {
        match &self.principal {
            Principal::SrsNode(i) => Some(*i),
            _ => None,
        }
    }

    /// The operator id, if this identity is an operator.
    pub fn as_operator(&self) -> Option<&str> {
        match &self.principal {
            Principal::Operator(id) => Some(id),
            _ => None,
        }
    }

    /// Whether this identity is an operator.
    pub fn is_operator(&self) -> bool {
        matches!(self.principal, Principal::Operator(_))
    }

    /// A short name for logs and audit entries, e.g. `patient/alice`.
    pub fn short(&self) -> String {
        let uri = self.to_string();
        uri.split_once(&format!("{}/", self.trust_domain))
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or(uri)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/", self.trust_domain)?;
        match &self.principal {
            Principal::User {
                role: Role::Patient,
                id,
            } => write!(f, "patient/{id}"),
            Principal::User { role, id } => write!(f, "practitioner/{role}/{id}"),
            Principal::Service(s) => write!(f, "service/{s}"),
            Principal::SrsNode(i) => write!(f, "service/srs-node/{i}"),
            Principal::Operator(id) => write!(f, "operator/{id}"),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let bad = |why| IdentityError::InvalidUri(uri.to_owned(), why);
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(|| bad("missing path"))?;
        validate_trust_domain(trust_domain).map_err(|_| bad("invalid trust domain"))?;
        let segments: Vec<&str> = path.split('/').collect();
        let principal = match segments.as_slice() {
            ["patient", id] => {
                validate_user_id(id)?;
                Principal::User {
                    role: Role::Patient,
                    id: (*id).to_owned(),
                }
            }
            ["practitioner", role, id] => {
                let role: Role = role.parse()?;
                if role == Role::Patient {
                    return Err(bad("patients use /patient/<id>"));
                }
                validate_user_id(id)?;
                Principal::User {
                    role,
                    id: (*id).to_owned(),
                }
            }
            ["service", name] => Principal::Service(name.parse()?),
            ["service", "srs-node", i] => Principal::SrsNode(i.parse()?),
            ["operator", id] => {
                validate_user_id(id)?;
                Principal::Operator((*id).to_owned())
            }
            _ => return Err(bad("unknown path")),
        };
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            principal,
        })
    }
}

/// A trust domain is a DNS-like name: 1-255 chars of `[a-z0-9.-]`.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidUri(
            td.to_owned(),
            "invalid trust domain",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for uri in [
            "spiffe://sesphr.local/patient/alice",
            "spiffe://sesphr.local/practitioner/doctor/bob",
            "spiffe://sesphr.local/practitioner/friend/d.ave-1",
            "spiffe://example.org/service/cloud-storage",
            "spiffe://example.org/service/srs",
            "spiffe://example.org/service/access-policy",
            "spiffe://example.org/service/srs-node/1",
            "spiffe://example.org/service/srs-node/16",
            "spiffe://example.org/operator/ops",
        ] {
            let id: Identity = uri.parse().unwrap();
            assert_eq!(id.to_string(), uri);
        }
    }

    #[test]
    fn bad_uris_are_rejected() {
        for uri in [
            "",
            "https://sesphr.local/patient/alice",
            "spiffe://sesphr.local",
            "spiffe://sesphr.local/patient/Alice",
            "spiffe://sesphr.local/patient/alice/extra",
            "spiffe://sesphr.local/practitioner/patient/alice",
            "spiffe://sesphr.local/practitioner/king/alice",
            "spiffe://sesphr.local/service/mallory",
            "spiffe://SESPHR/patient/alice",
            "spiffe:///patient/alice",
            "spiffe://sesphr.local/patient/",
            "spiffe://sesphr.local/service/srs-node/0",
            "spiffe://sesphr.local/service/srs-node/01",
            "spiffe://sesphr.local/service/srs-node/17",
            "spiffe://sesphr.local/service/srs-node/+1",
            "spiffe://sesphr.local/service/srs-node/",
            "spiffe://sesphr.local/service/srs-node",
        ] {
            assert!(uri.parse::<Identity>().is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn domains() {
        assert_eq!(Role::Family.domain(), Domain::Private);
        assert_eq!(Role::Insurer.domain(), Domain::Public);
        assert_eq!(Role::Patient.domain(), Domain::Owner);
    }

    #[test]
    fn short_names() {
        let id: Identity = "spiffe://sesphr.local/practitioner/doctor/bob"
            .parse()
            .unwrap();
        assert_eq!(id.short(), "practitioner/doctor/bob");
    }
}
