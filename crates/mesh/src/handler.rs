//! Helpers every service's gRPC adapter uses: run store work on the blocking
//! pool, check string fields, read the clock.
//!
//! Each handler reads like a routing table: take the typed caller, validate
//! the request, convert it, call the domain (on the blocking pool: sled
//! flushes are fsyncs), convert back. Domain errors become gRPC statuses in
//! [`crate::status`].

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs blocking store work (sled I/O, fsync, CPU-heavy crypto) off the
/// async executor.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Status>
where
    T: Send + 'static,
    E: crate::status::IntoStatus + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(crate::status::IntoStatus::into_status),
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            Err(Status::internal("internal error (task failed)"))
        }
    }
}

/// Rejects an empty or oversized string field with a message naming it.
pub fn require_field(name: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{name} is required")));
    }
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{name} is {} bytes long, at most {max} allowed",
            value.len()
        )));
    }
    Ok(())
}
