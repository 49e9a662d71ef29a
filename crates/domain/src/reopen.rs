//! Reopening a sled database a moment after it was closed.
//!
//! sled's background flusher can hold a just-dropped database's lock file
//! for a moment, so a store reopened at once in the same process (a test, an
//! in-process restart) may see "could not acquire lock". [`retry_lock`]
//! retries exactly that error, for at most ten seconds; every other error,
//! and a lock still held after that, is the caller's.

use std::time::{Duration, Instant};

/// How long [`retry_lock`] waits for a lock at most.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `open` until it does not fail on sled's lock file, at most
/// [`LOCK_PATIENCE`].
pub fn retry_lock<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match open() {
            Err(e)
                if Instant::now() < deadline
                    && format!("{e:?}").contains("could not acquire lock") =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
