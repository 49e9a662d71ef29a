//! Per-identity token buckets.
//!
//! Re-encryption and enrolment are the SRS's expensive calls; one client
//! (authenticated, but possibly compromised or buggy) must not starve the
//! rest. Keys are caller identities; memory stays bounded however many
//! distinct identities call.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Token bucket per key: each key may make `burst` calls at once and then
/// `rate_per_sec` calls per second on average.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Adds the tokens earned since `last`. A clock reading older than
    /// `last` (callers may pass slightly stale `Instant`s) earns nothing.
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if now > self.last {
            self.last = now;
        }
    }
}

impl RateLimiter {
    /// How many keys are tracked at most unless [`RateLimiter::with_max_keys`]
    /// says otherwise.
    pub const DEFAULT_MAX_KEYS: usize = 10_000;

    /// A negative, NaN or infinite `rate_per_sec` is treated as 0 (no
    /// refill); `burst == 0` denies everything.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        let rate = if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
            rate_per_sec
        } else {
            0.0
        };
        RateLimiter {
            rate,
            burst: f64::from(burst),
            max_keys: Self::DEFAULT_MAX_KEYS,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Bounds the number of tracked keys (at least 1).
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// A poisoned lock only means another thread panicked mid-check; the
    /// buckets are plain numbers and stay usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one token from `key`'s bucket; `false` means "too many calls,
    /// try later".
    pub fn check(&self, key: &str, now: Instant) -> bool {
        let mut map = self.lock();
        if let Some(b) = map.get_mut(key) {
            b.refill(now, self.rate, self.burst);
            return take(b);
        }
        if self.burst < 1.0 {
            return false;
        }
        if map.len() >= self.max_keys {
            self.evict(&mut map, now);
        }
        let mut b = Bucket {
            tokens: self.burst,
            last: now,
        };
        let allowed = take(&mut b);
        map.insert(key.to_owned(), b);
        allowed
    }

    /// Number of keys currently tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for one key. First drops idle buckets, those refilled to
    /// `burst`: forgetting them loses nothing, a new bucket starts full.
    /// If every bucket is busy, drops the least recently used one.
    fn evict(&self, map: &mut HashMap<String, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        map.retain(|_, b| {
            let mut r = *b;
            r.refill(now, rate, burst);
            r.tokens < burst
        });
        if map.len() >= self.max_keys {
            let oldest = map
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        tracing::debug!(tracked = map.len(), "rate limiter evicted buckets");
    }
}

fn take(b: &mut Bucket) -> bool {
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(10.0, 3);
        let t = Instant::now();
        assert!(rl.check("a", t));
        assert!(rl.check("a", t));
        assert!(rl.check("a", t));
        assert!(!rl.check("a", t));
        // 10/s: one token per 100 ms.
        assert!(!rl.check("a", t + ms(50)));
        assert!(rl.check("a", t + ms(100)));
        assert!(!rl.check("a", t + ms(100)));
        // Long idle: refills to burst, not beyond.
        let later = t + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(rl.check("a", later));
        }
        assert!(!rl.check("a", later));
    }

    #[test]
    fn keys_are_independent() {
        let rl = RateLimiter::new(1.0, 1);
        let t = Instant::now();
        assert!(rl.check("alice", t));
        assert!(!rl.check("alice", t));
        assert!(rl.check("bob", t));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn degenerate_parameters() {
        let t = Instant::now();
        let none = RateLimiter::new(5.0, 0);
        assert!(!none.check("a", t));
        assert!(none.is_empty());
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let rl = RateLimiter::new(rate, 2);
            assert!(rl.check("a", t));
            assert!(rl.check("a", t));
            assert!(!rl.check("a", t + Duration::from_secs(3600)));
        }
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let rl = RateLimiter::new(1.0, 1);
        let t = Instant::now() + Duration::from_secs(10);
        assert!(rl.check("a", t));
        assert!(!rl.check("a", t - Duration::from_secs(5)));
        assert!(rl.check("a", t + Duration::from_secs(1)));
    }

    #[test]
    fn size_stays_bounded() {
        let rl = RateLimiter::new(1.0, 5).with_max_keys(100);
        let t = Instant::now();
        for i in 0..1000 {
            assert!(rl.check(&format!("user{i}"), t));
            assert!(rl.len() <= 100);
        }
        // Idle buckets go first: after they refill, a busy key keeps its state.
        let rl = RateLimiter::new(1.0, 2).with_max_keys(3);
        assert!(rl.check("busy", t));
        assert!(rl.check("busy", t));
        assert!(rl.check("idle1", t));
        let later = t + Duration::from_millis(1500);
        // idle1 has refilled (1 + 1.5 >= 2); busy has 1.5 < 2 tokens.
        assert!(rl.check("new1", later));
        assert!(rl.check("new2", later));
        assert_eq!(rl.len(), 3);
        assert!(rl.check("busy", later));
        assert!(
            !rl.check("busy", later),
            "busy bucket was evicted and reset"
        );
    }

    #[test]
    fn shared_across_threads() {
        let rl = Arc::new(RateLimiter::new(0.0, 100));
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let rl = Arc::clone(&rl);
                std::thread::spawn(move || (0..50).filter(|_| rl.check("k", t)).count())
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 100);
    }
}
