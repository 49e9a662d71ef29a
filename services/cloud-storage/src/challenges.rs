//! Proof-of-ownership challenges: who was asked what about which blob.
//!
//! A client that holds only part of a file could otherwise redraw
//! challenges until one avoids its gaps (with 97 challenged leaves and 10 %
//! of the file missing, one draw in ~28,000 passes). So, per (caller, blob):
//!
//! - while a challenge is open and unexpired, asking again returns **the same
//!   one**: waiting or asking gives no new draw;
//! - at most [`ChallengePolicy::max_per_window`] challenges are issued per
//!   [`ChallengePolicy::window_secs`], counting answered, failed and expired
//!   ones alike;
//! - a challenge is answered at most once;
//! - a correct answer starts the count afresh: the caller holds the blob.
//!
//! Kept in memory and bounded ([`ChallengePolicy::max_entries`]): a restart
//! forgets open challenges, which only means an honest client asks again.

use std::collections::HashMap;
use std::sync::Mutex;

use sesphr_dedup::pow::{Challenge, DEFAULT_CHALLENGE_TTL_SECS};

use crate::DomainError;

/// How often challenges may be drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengePolicy {
    /// How long a challenge may be answered.
    pub ttl_secs: u64,
    /// Challenges per (caller, blob) per window.
    pub max_per_window: u32,
    pub window_secs: u64,
    /// (caller, blob) pairs remembered at once.
    pub max_entries: usize,
}

impl Default for ChallengePolicy {
    /// Five-minute challenges, three per (caller, blob) per hour: an honest
    /// client needs one; a client missing 10 % of a file would need ~28,000.
    fn default() -> Self {
        ChallengePolicy {
            ttl_secs: DEFAULT_CHALLENGE_TTL_SECS,
            max_per_window: 3,
            window_secs: 3600,
            max_entries: 100_000,
        }
    }
}

#[derive(Debug)]
struct Entry {
    open: Option<Challenge>,
    window_start: u64,
    issued: u32,
}

impl Entry {
    fn live(&self, now: u64, p: &ChallengePolicy) -> bool {
        now < self.window_start.saturating_add(p.window_secs)
            || self
                .open
                .as_ref()
                .is_some_and(|c| !c.is_expired(now, p.ttl_secs))
    }
}

/// Open challenges and draw counts, by (caller, blob id).
#[derive(Debug)]
pub struct ChallengeBook {
    policy: ChallengePolicy,
    entries: Mutex<HashMap<(String, [u8; 32]), Entry>>,
}

impl ChallengeBook {
    pub fn new(policy: ChallengePolicy) -> Self {
        ChallengeBook {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> ChallengePolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, [u8; 32]), Entry>> {
        // The map is consistent between statements; a panic elsewhere does
        // not make it wrong.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The challenge `caller` must answer for `blob_id` (a blob of
    /// `leaf_count` leaves) at time `now` (Unix seconds): the open one if
    /// there is one, else a fresh one if the window allows.
    pub fn issue(
        &self,
        caller: &str,
        blob_id: [u8; 32],
        leaf_count: u64,
        now: u64,
    ) -> Result<Challenge, DomainError> {
        let p = self.policy;
        let mut entries = self.lock();
        let key = (caller.to_owned(), blob_id);
        if !entries.contains_key(&key) && entries.len() >= p.max_entries {
            entries.retain(|_, e| e.live(now, &p));
            if entries.len() >= p.max_entries {
                return Err(DomainError::UsedUp(
                    "too many ownership challenges are open; retry shortly".into(),
                ));
            }
        }
        let entry = entries.entry(key).or_insert(Entry {
            open: None,
            window_start: now,
            issued: 0,
        });
        if let Some(open) = &entry.open
            && !open.is_expired(now, p.ttl_secs)
            && open.leaf_count() == leaf_count
        {
            return Ok(open.clone());
        }
        if now >= entry.window_start.saturating_add(p.window_secs) {
            entry.window_start = now;
            entry.issued = 0;
        }
        if entry.issued >= p.max_per_window {
            let retry = entry.window_start.saturating_add(p.window_secs) - now;
            return Err(DomainError::UsedUp(format!(
                "{} ownership challenges for this blob were issued to you in the last {} s; \
                 retry in {retry} s or upload the file instead",
                p.max_per_window, p.window_secs
            )));
        }
        let challenge = Challenge::generate(&mut rand::rng(), leaf_count, now)
            .map_err(|e| DomainError::Malformed(format!("cannot issue a challenge: {e}")))?;
        entry.issued += 1;
        entry.open = Some(challenge.clone());
        Ok(challenge)
    }

    /// `caller` answered for `blob_id` correctly: it holds the blob, so its
    /// count starts afresh (redraws only matter to those who cannot answer).
    pub fn proved(&self, caller: &str, blob_id: [u8; 32]) {
        self.lock().remove(&(caller.to_owned(), blob_id));
    }

    /// Takes the open challenge of `caller` for `blob_id` to check an answer
    /// against: single use, whatever the answer turns out to be.
    pub fn take(
        &self,
        caller: &str,
        blob_id: [u8; 32],
        now: u64,
    ) -> Result<Challenge, DomainError> {
        let ttl = self.policy.ttl_secs;
        let challenge = self
            .lock()
            .get_mut(&(caller.to_owned(), blob_id))
            .and_then(|e| e.open.take())
            .ok_or_else(|| {
                DomainError::Conflict(
                    "no open ownership challenge for this blob: call QueryBlob first \
                     (challenges are single-use)"
                        .into(),
                )
            })?;
        if challenge.is_expired(now, ttl) {
            return Err(DomainError::Conflict(format!(
                "the ownership challenge expired ({ttl} s); call QueryBlob again"
            )));
        }
        Ok(challenge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000;
    const BLOB: [u8; 32] = [7; 32];

    #[test]
    fn asking_again_returns_the_open_challenge() {
        let book = ChallengeBook::new(ChallengePolicy::default());
        let a = book.issue("mallory", BLOB, 1000, T).unwrap();
        for dt in [0, 1, 60, 299] {
            assert_eq!(book.issue("mallory", BLOB, 1000, T + dt).unwrap(), a);
        }
        // Another caller or blob gets its own.
        assert_ne!(book.issue("alice", BLOB, 1000, T).unwrap(), a);
        assert_ne!(book.issue("mallory", [8; 32], 1000, T).unwrap(), a);
    }

    #[test]
    fn draws_per_window_are_capped_answered_or_not() {
        let p = ChallengePolicy::default();
        let book = ChallengeBook::new(p);
        let mut seen = Vec::new();
        let mut now = T;
        for _ in 0..p.max_per_window {
            let c = book.issue("mallory", BLOB, 1000, now).unwrap();
            assert!(!seen.contains(&c));
            seen.push(c);
            book.take("mallory", BLOB, now).unwrap();
            now += 1;
        }
        let err = book.issue("mallory", BLOB, 1000, now).unwrap_err();
        assert!(matches!(err, DomainError::UsedUp(_)), "{err}");
        // Waiting out a challenge's expiry does not help either.
        let err = book
            .issue("mallory", BLOB, 1000, now + p.ttl_secs + 1)
            .unwrap_err();
        assert!(matches!(err, DomainError::UsedUp(_)), "{err}");
        // The next window allows a new draw.
        assert!(book.issue("mallory", BLOB, 1000, T + p.window_secs).is_ok());
        // A correct answer starts the count afresh.
        book.proved("mallory", BLOB);
        for _ in 0..p.max_per_window {
            book.issue("mallory", BLOB, 1000, now).unwrap();
            book.take("mallory", BLOB, now).unwrap();
        }
    }

    #[test]
    fn challenges_are_single_use_and_expire() {
        let p = ChallengePolicy::default();
        let book = ChallengeBook::new(p);
        assert!(book.take("alice", BLOB, T).is_err(), "nothing issued");
        book.issue("alice", BLOB, 10, T).unwrap();
        book.take("alice", BLOB, T).unwrap();
        assert!(book.take("alice", BLOB, T).is_err(), "single use");
        book.issue("alice", BLOB, 10, T).unwrap();
        let err = book.take("alice", BLOB, T + p.ttl_secs + 1).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn memory_is_bounded() {
        let p = ChallengePolicy {
            max_entries: 4,
            ..ChallengePolicy::default()
        };
        let book = ChallengeBook::new(p);
        for i in 0..4u8 {
            book.issue("mallory", [i; 32], 10, T).unwrap();
        }
        assert!(matches!(
            book.issue("mallory", [9; 32], 10, T),
            Err(DomainError::UsedUp(_))
        ));
        // Once the old ones are past their window and expiry, room returns.
        assert!(
            book.issue("mallory", [9; 32], 10, T + p.window_secs + 1)
                .is_ok()
        );
    }
}
