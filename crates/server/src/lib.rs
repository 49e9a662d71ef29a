//! `sesphrd`: runs one SeSPHR service ([`daemon::run_service`]) or the whole
//! mesh in one process for development and tests ([`daemon::DevMesh`]), from
//! a TOML file with `SESPHR_*` overrides ([`config`]).
//!
//! The services themselves live in `services/*` (domain logic, store and
//! gRPC adapter each); this crate wires them to listeners, the mesh layers,
//! reflection and health.

pub mod config;
pub mod daemon;
