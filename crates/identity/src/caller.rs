//! The caller of one request, typed: what a handler is given instead of a
//! certificate.

use std::fmt;

use crate::{Identity, NodeIndex, Principal, Role, Service, UserId};

/// Who is calling, as the mesh's authorization layer established it from
/// the verified client certificate (once per connection).
///
/// Handlers match on this; an owner-only rule is
/// `let Caller::Patient(owner) = caller else { … }`, which cannot yield an
/// empty id or panic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A patient (`/patient/<id>`): owns records.
    Patient(UserId),
    /// A practitioner of any role, private or public domain
    /// (`/practitioner/<role>/<id>`).
    Practitioner {
        /// The role its certificate names.
        role: Role,
        /// The user id.
        id: UserId,
    },
    /// One of the mesh's services (`/service/<name>`).
    Service(Service),
    /// One re-encryption node (`/service/srs-node/<i>`).
    SrsNode(NodeIndex),
    /// A mesh operator (`/operator/<id>`): may inspect, never read records.
    Operator(UserId),
    /// No client certificate (only where the table allows anyone: enrollment).
    Anonymous,
}

/// The audit-log witness name of a service: `srs-node-<i>` or the
/// service's name (`cloud-storage`). Cosignatures carry it, mesh files list
/// witnesses by it.
pub fn witness_name_of_node(index: NodeIndex) -> String {
    index.name()
}

impl Caller {
    /// The name under which this caller cosigns audit checkpoints, if it is
    /// a mesh service that may be a witness (CloudStorage or a node).
    pub fn witness_name(&self) -> Option<String> {
        match self {
            Caller::SrsNode(i) => Some(witness_name_of_node(*i)),
            Caller::Service(Service::CloudStorage) => Some(Service::CloudStorage.to_string()),
            _ => None,
        }
    }

    /// The typed caller of a verified identity (its trust domain already
    /// checked against the mesh's).
    pub fn from_identity(id: &Identity) -> Caller {
        // Identity's constructors and parser checked the id syntax, so
        // these parses cannot fail; fall back to Anonymous rather than panic.
        match &id.principal {
            Principal::User { role, id } => match UserId::parse(id.as_str()) {
                Ok(id) if *role == Role::Patient => Caller::Patient(id),
                Ok(id) => Caller::Practitioner { role: *role, id },
                Err(_) => Caller::Anonymous,
            },
            Principal::Service(s) => Caller::Service(*s),
            Principal::SrsNode(i) => Caller::SrsNode(*i),
            Principal::Operator(op) => UserId::parse(op.as_str())
                .map(Caller::Operator)
                .unwrap_or(Caller::Anonymous),
        }
    }

    /// The identity this caller has in `trust_domain` (`None` if anonymous).
    pub fn identity(&self, trust_domain: &str) -> Option<Identity> {
        let principal = match self {
            Caller::Patient(id) => Principal::User {
                role: Role::Patient,
                id: id.to_string(),
            },
            Caller::Practitioner { role, id } => Principal::User {
                role: *role,
                id: id.to_string(),
            },
            Caller::Service(s) => Principal::Service(*s),
            Caller::SrsNode(i) => Principal::SrsNode(*i),
            Caller::Operator(id) => Principal::Operator(id.to_string()),
            Caller::Anonymous => return None,
        };
        Some(Identity {
            trust_domain: trust_domain.to_owned(),
            principal,
        })
    }

    /// The user id and role of a patient or practitioner.
    pub fn as_user(&self) -> Option<(Role, &UserId)> {
        match self {
            Caller::Patient(id) => Some((Role::Patient, id)),
            Caller::Practitioner { role, id } => Some((*role, id)),
            _ => None,
        }
    }

    /// Whether the caller is a mesh service or a re-encryption node (a
    /// server of the mesh, not a person).
    pub fn is_mesh_server(&self) -> bool {
        matches!(self, Caller::Service(_) | Caller::SrsNode(_))
    }

    /// The patient's id, if the caller is a patient.
    pub fn as_patient(&self) -> Option<&UserId> {
        match self {
            Caller::Patient(id) => Some(id),
            _ => None,
        }
    }
}

/// Short form for logs and messages: `patient/alice`,
/// `practitioner/doctor/bob`, `service/srs`, `operator/ops`, `anonymous`.
impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Patient(id) => write!(f, "patient/{id}"),
            Caller::Practitioner { role, id } => write!(f, "practitioner/{role}/{id}"),
            Caller::Service(s) => write!(f, "service/{s}"),
            Caller::SrsNode(i) => write!(f, "service/srs-node/{i}"),
            Caller::Operator(id) => write!(f, "operator/{id}"),
            Caller::Anonymous => f.write_str("anonymous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_identity() {
        let td = "sesphr.local";
        for id in [
            Identity::user(td, Role::Patient, "alice").unwrap(),
            Identity::user(td, Role::Doctor, "bob").unwrap(),
            Identity::service(td, Service::Srs),
            Identity::srs_node(td, NodeIndex::new(3).unwrap()),
            Identity::operator(td, "ops").unwrap(),
        ] {
            let caller = Caller::from_identity(&id);
            assert_eq!(caller.identity(td).as_ref(), Some(&id));
            assert_eq!(caller.to_string(), id.short());
        }
        assert_eq!(Caller::Anonymous.identity(td), None);
    }
}
