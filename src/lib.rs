//! The SeSPHR wire contract: the generated `sesphr.v1` stubs ([`proto`];
//! client stubs with the `client` feature, server stubs with `server`), the
//! descriptor set reflection serves, and the one table of every RPC
//! ([`rpc`]) that authorization, limits, audit and the docs read.
//!
//! This is the API crate of the workspace (in the manner of linkerd2-proxy's
//! `-api` crates): it knows no store, no TLS and no service logic. See
//! `ARCHITECTURE.md` for the crates around it.

#![warn(missing_docs)]

pub mod proto;
pub mod rpc;

pub use rpc::{CallerClass, Cost, Rpc, RpcSpec, RpcTable};
