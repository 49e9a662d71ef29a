//! The generated `sesphr.v1` stubs (compiled by the root `build.rs` from
//! `proto/`) and the file descriptor set served by reflection.
//!
//! Only the services' `grpc` adapters, the mesh crate and the client SDK
//! know prost types; domain logic never sees them.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("sesphr.v1");

/// Encoded `FileDescriptorSet` of every `sesphr.v1` file, with comments.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sesphr_descriptor");

/// Fully-qualified gRPC service names, as reflection and health report them.
pub mod service_names {
    pub const CLOUD_STORAGE: &str = "sesphr.v1.CloudStorage";
    pub const SRS: &str = "sesphr.v1.Srs";
    pub const ACCESS_POLICY: &str = "sesphr.v1.AccessPolicy";
    pub const SRS_NODE: &str = "sesphr.v1.SrsNode";
    /// Every service of the mesh.
    pub const ALL: [&str; 4] = [CLOUD_STORAGE, SRS, ACCESS_POLICY, SRS_NODE];
}

impl From<sesphr_identity::Role> for Role {
    fn from(role: sesphr_identity::Role) -> Self {
        use sesphr_identity::Role as R;
        match role {
            R::Patient => Role::Patient,
            R::Doctor => Role::Doctor,
            R::Nurse => Role::Nurse,
            R::Pharmacist => Role::Pharmacist,
            R::Insurer => Role::Insurer,
            R::Researcher => Role::Researcher,
            R::Family => Role::Family,
            R::Friend => Role::Friend,
            R::Emergency => Role::Emergency,
        }
    }
}

impl Role {
    /// The domain role, or `None` for `ROLE_UNSPECIFIED`.
    pub fn to_domain(self) -> Option<sesphr_identity::Role> {
        use sesphr_identity::Role as R;
        Some(match self {
            Role::Unspecified => return None,
            Role::Patient => R::Patient,
            Role::Doctor => R::Doctor,
            Role::Nurse => R::Nurse,
            Role::Pharmacist => R::Pharmacist,
            Role::Insurer => R::Insurer,
            Role::Researcher => R::Researcher,
            Role::Family => R::Family,
            Role::Friend => R::Friend,
            Role::Emergency => R::Emergency,
        })
    }
}
