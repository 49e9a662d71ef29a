//! Coalescing of repeated audit events, so one identity cannot grow the
//! audit log without bound.
//!
//! Audit entries are kept forever and each costs an fsync, so refusals (a
//! denied check, a `denied:*` event) and probes (outcome `probe`) are
//! budgeted per *refused identity* —
//! the grantee or caller being refused, not the service relaying it. Each
//! identity has a token bucket of [`RefusalLimits::rate_per_sec`] entries a
//! second with a burst of [`RefusalLimits::burst`]. Within budget a refusal
//! is its own entry. Over budget, it is counted into an *aggregate* keyed by
//! (identity, action, owner), and the aggregate is written later as **one**
//! entry carrying the count and the time span, attributed to the owner so
//! the owner sees it in her view:
//!
//! ```text
//! outcome "denied", detail "N further refusals of <action> by <identity>
//! between <T1> and <T2> (last reason: …)"
//! ```
//!
//! While an identity has aggregates pending, its further refusals join them
//! (so the log stays in bursts of at most `burst` individual entries per
//! `flush_interval`). Aggregates are written once they are
//! [`RefusalLimits::flush_interval`] old, by the identity's next refusal or
//! by the periodic [`crate::PolicyStore::flush_coalesced`] the server calls,
//! and all of them on shutdown. Writing one costs a token too (the bucket
//! may go into debt down to `-burst`), so the long-run rate per identity
//! stays at most `rate_per_sec` plus one entry per pending key and interval.
//!
//! Memory is bounded: at most [`RefusalLimits::max_keys_per_identity`]
//! aggregates per identity and [`RefusalLimits::max_keys`] overall (beyond
//! either, the refusal goes into the identity's catch-all aggregate, action
//! `*`, no owner), and at most [`RefusalLimits::max_identities`] identities
//! tracked (idle ones are forgotten; beyond that, refusals go into a single
//! process-wide overflow aggregate).
//!
//! Only logging is coalesced: the decision the caller gets is unchanged.
//! Nothing that succeeded or was allowed passes through here, except
//! `ListAudit` reads, which use their own, much smaller budget
//! ([`RefusalLimits::AUDIT_READS`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{AuditAction, AuditEvent, Outcome, format_unix_time, truncate};

/// Individual refusal entries per second per refused identity, sustained.
pub const REFUSALS_PER_SEC: f64 = 100.0;
/// Individual refusal entries an identity may add at once.
pub const REFUSAL_BURST: u32 = 50;
/// How long refusals are counted before their aggregate entry is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Aggregates one identity may have pending (plus its catch-all).
pub const MAX_KEYS_PER_IDENTITY: usize = 16;
/// Aggregates pending across all identities (catch-alls aside).
pub const MAX_KEYS: usize = 8192;
/// Identities whose budget is tracked at once.
pub const MAX_IDENTITIES: usize = 8192;

/// `ListAudit` calls audited individually per identity: a few, then one an
/// hour-ish on average; the rest are counted into one entry a minute.
pub const AUDIT_READS_PER_SEC: f64 = 1.0 / 600.0;
pub const AUDIT_READ_BURST: u32 = 3;
pub const AUDIT_READ_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Action of a catch-all aggregate (many actions or owners merged).
pub const CATCH_ALL_ACTION: AuditAction = AuditAction::Various;
/// Identity of the process-wide overflow aggregate.
pub const OVERFLOW_IDENTITY: &str = "(untracked identities)";

/// Longest reason kept in memory for an aggregate entry's detail.
const MAX_REASON_LEN: usize = 200;

/// The budget of one class of coalesced events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefusalLimits {
    pub rate_per_sec: f64,
    pub burst: u32,
    pub flush_interval: Duration,
    pub max_keys_per_identity: usize,
    pub max_keys: usize,
    pub max_identities: usize,
}

impl RefusalLimits {
    /// Refusals (denied checks, `denied:*` events).
    pub const REFUSALS: RefusalLimits = RefusalLimits {
        rate_per_sec: REFUSALS_PER_SEC,
        burst: REFUSAL_BURST,
        flush_interval: FLUSH_INTERVAL,
        max_keys_per_identity: MAX_KEYS_PER_IDENTITY,
        max_keys: MAX_KEYS,
        max_identities: MAX_IDENTITIES,
    };

    /// `ListAudit` reads.
    pub const AUDIT_READS: RefusalLimits = RefusalLimits {
        rate_per_sec: AUDIT_READS_PER_SEC,
        burst: AUDIT_READ_BURST,
        flush_interval: AUDIT_READ_FLUSH_INTERVAL,
        max_keys_per_identity: 4,
        max_keys: MAX_KEYS,
        max_identities: MAX_IDENTITIES,
    };
}

impl Default for RefusalLimits {
    fn default() -> Self {
        Self::REFUSALS
    }
}

/// Events of one (identity, action, owner) not written individually.
#[derive(Debug)]
struct Aggregate {
    action: AuditAction,
    owner_id: String,
    /// Kept while every event agreed on it, else emptied.
    partition: String,
    record_id: String,
    actor: String,
    outcome: Outcome,
    count: u64,
    first: i64,
    last: i64,
    /// When the first event was counted (the flush is due from this on).
    since: Instant,
    last_reason: String,
}

impl Aggregate {
    fn new(action: AuditAction, owner_id: String, ev: &AuditEvent, now: i64, at: Instant) -> Self {
        Aggregate {
            action,
            owner_id,
            partition: ev.partition.clone(),
            record_id: ev.record_id.clone(),
            actor: ev.actor.clone(),
            outcome: ev.outcome,
            count: 0,
            first: now,
            last: now,
            since: at,
            last_reason: String::new(),
        }
    }

    fn add(&mut self, ev: &AuditEvent, now: i64) {
        self.count += 1;
        self.first = self.first.min(now);
        self.last = self.last.max(now);
        if self.partition != ev.partition {
            self.partition.clear();
        }
        if self.record_id != ev.record_id {
            self.record_id.clear();
        }
        self.last_reason = truncate_to(&ev.detail, MAX_REASON_LEN).to_owned();
    }

    fn into_event(self, identity: &str) -> AuditEvent {
        let what = match self.action {
            AuditAction::Various => "various actions".to_owned(),
            other => other.to_string(),
        };
        let noun = match self.outcome {
            Outcome::Denied => "refusals",
            Outcome::Probe => "probes",
            Outcome::Ok | Outcome::Allowed => "events",
        };
        let mut detail = format!(
            "{} further {noun} of {what} by {} between {} and {}",
            self.count,
            truncate(identity),
            format_unix_time(self.first),
            format_unix_time(self.last),
        );
        if !self.last_reason.is_empty() {
            detail.push_str(&format!(" (last: {})", self.last_reason));
        }
        AuditEvent {
            actor: self.actor,
            action: self.action,
            owner_id: self.owner_id,
            partition: self.partition,
            subject: identity.to_owned(),
            record_id: self.record_id,
            outcome: self.outcome,
            detail,
        }
    }
}

fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug)]
struct IdentityState {
    tokens: f64,
    refilled: Instant,
    /// Per (action, owner); the catch-all has action [`CATCH_ALL_ACTION`].
    pending: Vec<Aggregate>,
}

impl IdentityState {
    fn refill(&mut self, limits: &RefusalLimits, at: Instant) {
        let dt = at.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * limits.rate_per_sec).min(f64::from(limits.burst));
        self.refilled = at;
    }

    fn charge(&mut self, limits: &RefusalLimits) {
        self.tokens = (self.tokens - 1.0).max(-f64::from(limits.burst));
    }

    fn oldest(&self) -> Option<Instant> {
        self.pending.iter().map(|a| a.since).min()
    }

    fn idle(&self, limits: &RefusalLimits) -> bool {
        self.pending.is_empty() && self.tokens >= f64::from(limits.burst)
    }
}

/// The coalescing state of one class of events. Not synchronised: the store
/// keeps it under its append lock, so what it decides and what is appended
/// stay in step.
#[derive(Debug)]
pub struct Coalescer {
    limits: RefusalLimits,
    identities: HashMap<String, IdentityState>,
    /// Pending aggregates other than catch-alls, over all identities.
    keys: usize,
    overflow: Option<Aggregate>,
}

impl Coalescer {
    pub fn new(limits: RefusalLimits) -> Self {
        Coalescer {
            limits,
            identities: HashMap::new(),
            keys: 0,
            overflow: None,
        }
    }

    pub fn limits(&self) -> &RefusalLimits {
        &self.limits
    }

    /// Events counted but not yet written, over all identities.
    pub fn pending_events(&self) -> u64 {
        self.identities
            .values()
            .flat_map(|s| s.pending.iter())
            .chain(self.overflow.iter())
            .map(|a| a.count)
            .sum()
    }

    /// Takes one event of `identity`. Returns the events to append now (in
    /// order): `ev` itself if within budget, and any of the identity's
    /// aggregates that are due.
    pub fn admit(
        &mut self,
        identity: &str,
        ev: AuditEvent,
        now: i64,
        at: Instant,
    ) -> Vec<AuditEvent> {
        let limits = self.limits;
        if !self.identities.contains_key(identity) && !self.make_room(at) {
            let agg = self.overflow.get_or_insert_with(|| {
                Aggregate::new(CATCH_ALL_ACTION, String::new(), &ev, now, at)
            });
            agg.add(&ev, now);
            return self.due_overflow(at, false);
        }
        let state = self
            .identities
            .entry(identity.to_owned())
            .or_insert_with(|| IdentityState {
                tokens: f64::from(limits.burst),
                refilled: at,
                pending: Vec::new(),
            });
        state.refill(&limits, at);
        let mut out = Vec::new();
        if state.pending.is_empty() && state.tokens >= 1.0 {
            state.charge(&limits);
            out.push(ev);
        } else {
            let pos = state
                .pending
                .iter()
                .position(|a| a.action == ev.action && a.owner_id == ev.owner_id);
            let pos = match pos {
                Some(p) => p,
                None => {
                    let named = state
                        .pending
                        .iter()
                        .filter(|a| a.action != CATCH_ALL_ACTION)
                        .count();
                    if named < limits.max_keys_per_identity && self.keys < limits.max_keys {
                        self.keys += 1;
                        state.pending.push(Aggregate::new(
                            ev.action,
                            ev.owner_id.clone(),
                            &ev,
                            now,
                            at,
                        ));
                        state.pending.len() - 1
                    } else if let Some(p) = state
                        .pending
                        .iter()
                        .position(|a| a.action == CATCH_ALL_ACTION)
                    {
                        p
                    } else {
                        state.pending.push(Aggregate::new(
                            CATCH_ALL_ACTION,
                            String::new(),
                            &ev,
                            now,
                            at,
                        ));
                        state.pending.len() - 1
                    }
                }
            };
            state.pending[pos].add(&ev, now);
        }
        if state
            .oldest()
            .is_some_and(|t| at.saturating_duration_since(t) >= limits.flush_interval)
        {
            out.extend(self.drain(identity));
        }
        out.extend(self.due_overflow(at, false));
        out
    }

    /// The aggregate events that are due (all of them with `force`), removed
    /// from the pending set; idle identities are forgotten.
    pub fn flush(&mut self, at: Instant, force: bool) -> Vec<AuditEvent> {
        let limits = self.limits;
        let due: Vec<String> = self
            .identities
            .iter_mut()
            .filter_map(|(id, s)| {
                s.refill(&limits, at);
                let due = s.oldest().is_some_and(|t| {
                    force || at.saturating_duration_since(t) >= limits.flush_interval
                });
                due.then(|| id.clone())
            })
            .collect();
        let mut out = Vec::new();
        for id in due {
            out.extend(self.drain(&id));
        }
        out.extend(self.due_overflow(at, force));
        self.identities.retain(|_, s| !s.idle(&limits));
        out
    }

    /// Writes (returns) all of `identity`'s aggregates, charging a token each.
    fn drain(&mut self, identity: &str) -> Vec<AuditEvent> {
        let limits = self.limits;
        let Some(state) = self.identities.get_mut(identity) else {
            return Vec::new();
        };
        let mut pending = std::mem::take(&mut state.pending);
        pending.sort_by_key(|a| a.since);
        let mut out = Vec::with_capacity(pending.len());
        for agg in pending {
            if agg.action != CATCH_ALL_ACTION {
                self.keys -= 1;
            }
            state.charge(&limits);
            out.push(agg.into_event(identity));
        }
        out
    }

    fn due_overflow(&mut self, at: Instant, force: bool) -> Vec<AuditEvent> {
        let due = self.overflow.as_ref().is_some_and(|a| {
            force || at.saturating_duration_since(a.since) >= self.limits.flush_interval
        });
        if !due {
            return Vec::new();
        }
        self.overflow
            .take()
            .map(|a| vec![a.into_event(OVERFLOW_IDENTITY)])
            .unwrap_or_default()
    }

    /// Whether a new identity can be tracked (forgetting idle ones if full).
    fn make_room(&mut self, at: Instant) -> bool {
        if self.identities.len() < self.limits.max_identities {
            return true;
        }
        let limits = self.limits;
        self.identities.retain(|_, s| {
            s.refill(&limits, at);
            !s.idle(&limits)
        });
        self.identities.len() < self.limits.max_identities
    }
}

/// The identity a refusal is charged to: the subject being refused when the
/// event names one (a service relays it), else the actor (a caller refused
/// at AccessPolicy itself). `practitioner/<role>/<id>` and `<role>/<id>` are
/// the same identity.
pub fn refused_identity(ev: &AuditEvent) -> &str {
    let who = if ev.subject.is_empty() {
        &ev.actor
    } else {
        &ev.subject
    };
    who.strip_prefix("practitioner/").unwrap_or(who)
}

/// Whether `ev` is subject to the refusal budget: a refusal, or a probe
/// (outcome `probe`: an existence check such as `QueryBlob`, a content-key
/// evaluation or a directory lookup, cheap to repeat and worth a count
/// rather than an entry each).
pub fn is_refusal(ev: &AuditEvent) -> bool {
    matches!(ev.outcome, Outcome::Denied | Outcome::Probe)
        || matches!(ev.action, AuditAction::Denied(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    const CHECK_READ: AuditAction = AuditAction::Check(Action::Read);

    fn refusal(owner: &str, action: AuditAction) -> AuditEvent {
        AuditEvent {
            actor: "service/cloud-storage".into(),
            action,
            owner_id: owner.into(),
            partition: "medical".into(),
            subject: "patient/mallory".into(),
            record_id: String::new(),
            outcome: Outcome::Denied,
            detail: "no grant".into(),
        }
    }

    fn count_of(ev: &AuditEvent) -> u64 {
        ev.detail
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn within_budget_every_event_is_written() {
        let mut c = Coalescer::new(RefusalLimits::REFUSALS);
        let t = Instant::now();
        for i in 0..REFUSAL_BURST {
            let out = c.admit("patient/mallory", refusal("alice", CHECK_READ), 0, t);
            assert_eq!(out.len(), 1, "event {i}");
        }
        assert_eq!(c.pending_events(), 0);
    }

    #[test]
    fn over_budget_events_are_counted_and_flushed_once() {
        let mut c = Coalescer::new(RefusalLimits::REFUSALS);
        let t = Instant::now();
        let mut written = Vec::new();
        for i in 0..5_000u32 {
            // 5,000 within half a second.
            let at = t + Duration::from_micros(u64::from(i) * 100);
            written.extend(c.admit("patient/mallory", refusal("alice", CHECK_READ), 7, at));
        }
        assert!(written.len() <= 100, "{} written", written.len());
        written.extend(c.flush(t + Duration::from_millis(600), false));
        assert_eq!(c.pending_events(), 4_950, "not due yet");
        written.extend(c.flush(t + Duration::from_secs(2), false));
        let individual = written.iter().filter(|e| e.detail == "no grant").count() as u64;
        let aggregated: u64 = written
            .iter()
            .filter(|e| e.detail != "no grant")
            .map(count_of)
            .sum();
        assert_eq!(individual + aggregated, 5_000);
        let agg = written.last().unwrap();
        assert_eq!(agg.owner_id, "alice");
        assert_eq!(agg.outcome, Outcome::Denied);
        assert_eq!(agg.subject, "patient/mallory");
        assert!(
            agg.detail.contains("further refusals of check:read"),
            "{agg:?}"
        );
        assert_eq!(c.pending_events(), 0);
        // Idle again after a while: forgotten.
        c.flush(t + Duration::from_secs(10), false);
        assert!(c.identities.is_empty());
    }

    #[test]
    fn keys_are_capped_per_identity_and_overall() {
        let limits = RefusalLimits {
            burst: 1,
            max_keys_per_identity: 3,
            max_keys: 4,
            max_identities: 2,
            ..RefusalLimits::REFUSALS
        };
        let mut c = Coalescer::new(limits);
        let t = Instant::now();
        for id in ["patient/m1", "patient/m2"] {
            for owner in 0..50 {
                let mut ev = refusal(&format!("u{owner}"), CHECK_READ);
                ev.subject = id.into();
                c.admit(id, ev, 0, t);
            }
        }
        assert!(c.keys <= 4);
        for s in c.identities.values() {
            assert!(s.pending.len() <= 4, "{}", s.pending.len());
        }
        // A third identity is not tracked: overflow.
        let mut ev = refusal("alice", CHECK_READ);
        ev.subject = "patient/m3".into();
        assert!(c.admit("patient/m3", ev, 0, t).is_empty());
        assert_eq!(c.identities.len(), 2);
        let out = c.flush(t, true);
        let total: u64 = out.iter().map(count_of).sum();
        assert_eq!(total, 2 * 49 + 1);
        assert!(
            out.iter()
                .any(|e| e.action == CATCH_ALL_ACTION && e.owner_id.is_empty())
        );
        assert!(out.iter().any(|e| e.subject == OVERFLOW_IDENTITY));
        assert_eq!(c.keys, 0);
    }

    #[test]
    fn identities_are_normalised() {
        let mut ev = refusal("alice", CHECK_READ);
        ev.subject = "practitioner/doctor/bob".into();
        assert_eq!(refused_identity(&ev), "doctor/bob");
        ev.subject.clear();
        ev.actor = "patient/eve".into();
        assert_eq!(refused_identity(&ev), "patient/eve");
    }
}
