//! Real external servers for tests: PostgreSQL and Garage (an S3-compatible
//! store), each started on loopback in a temporary directory and stopped
//! when its handle drops.
//!
//! Nothing here is a stand-in: the binaries are Debian's PostgreSQL
//! (`scripts/tools/postgres.sh` installs it) and Garage built from
//! crates.io (`scripts/tools/garage.sh` builds it once into a cache). A
//! missing binary is an error naming the script that provides it, never a
//! silently skipped test.
//!
//! Every server is started through `setpriv --pdeathsig`, so it dies with
//! the thread that started it even if the test process is killed; a handle
//! must therefore be created on the thread that lives as long as the server
//! is needed (a `#[test]` function's own thread is right).

mod garage;
mod postgres;
mod process;

pub use garage::{Garage, S3Endpoint};
pub use postgres::Postgres;

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error("{0}")]
    Failed(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it next).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io("local_addr"))?.port())
}
