//! The mesh-wide integration tests, linked into one binary: real servers on
//! ephemeral loopback ports, generated PKI, temp sled directories, real mTLS
//! gRPC clients, and the `sesphr`/`sesphrd` binaries as a user runs them.
//! One binary links once and shares one test harness (the suite runs its
//! tests in parallel across modules).

mod common;

mod audit_log;
mod authorization;
mod bad_input;
mod cli;
mod dedup;
mod deploy_config;
mod devices;
mod distrust;
mod durability;
mod faults;
mod hostile_audit;
mod hostile_clients;
mod hostile_transport;
mod identities;
mod impostor;
mod impostor_forgery;
mod mesh;
mod secrets;
mod shared_storage;
mod sharing;
mod srs_nodes;
mod trustees;
