//! `sesphrd`: runs one SeSPHR service or re-encryption node
//! ([`daemon::run_service`]) or the whole mesh in one process for
//! development and tests ([`daemon::DevMesh`]), from a TOML file with
//! `SESPHR_*` overrides ([`config`]); deals the dedup OPRF key to the nodes
//! ([`dealing`]); keeps each service's state in sled or PostgreSQL + S3
//! ([`storage`]).
//!
//! The services themselves live in `services/*` (domain logic, store and
//! gRPC adapter each); this crate wires them to listeners, the mesh layers,
//! reflection and health.

pub mod backends;
pub mod config;
pub mod daemon;
pub mod dealing;
pub mod migrate;
pub mod move_store;
pub mod storage;
pub mod witness;
