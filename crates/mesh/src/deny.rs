//! The deny list: the users an operator disabled and the devices users
//! removed, as every service holds it.
//!
//! AccessPolicy owns it (a disable is one durable write with its audit
//! entry, `AccessPolicy/DisableUser`) and holds the authoritative copy in
//! memory. Every other service and node follows it ([`follow`]): it polls
//! `AccessPolicy/GetDenyList` every `poll_interval` with the version it
//! holds and takes the whole list when it changed. The authorization layer
//! ([`crate::auth`]) asks [`DenyList::verdict`] for every call of a patient
//! or practitioner and refuses a disabled one (`PERMISSION_DENIED`, "user
//! disabled"), audited like every refusal.
//!
//! **Staleness bound.** A follower serves users only while its copy is
//! younger than `max_staleness` (a copy is as old as the last answer
//! AccessPolicy gave it); past that it refuses them (`UNAVAILABLE`), so it
//! fails closed like every call that needs AccessPolicy. A disable that
//! AccessPolicy acknowledged at time T is therefore enforced everywhere by
//! T + `max_staleness` + one call's deadline, whatever the caller's
//! certificate says: 5 s + the poll's timeout with the defaults, within the
//! 10 s the mesh promises. Operators and services are never on the list.
//!
//! **Revoked devices.** A user who removes a device (`Srs/RemoveDevice`)
//! has the setup service put (user, device, until) on the list
//! (`AccessPolicy/RevokeDevice`): every certificate naming that device
//! ([`crate::trust::device`]) is refused like a disabled user's, until
//! `until`, when the last of them has expired anyway and the entry is
//! dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use sesphr::proto::GetDenyListRequest;
use sesphr::proto::access_policy_client::AccessPolicyClient;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How often a follower asks by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How old a follower's copy may get before it refuses users, by default.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);
/// Most users the list holds (a snapshot of ids up to 64 bytes must fit
/// one 4 MiB gRPC message).
pub const MAX_DISABLED_USERS: usize = 50_000;

/// Most revoked devices the list holds.
pub const MAX_REVOKED_DEVICES: usize = 50_000;
/// Most revoked devices of one user the list holds (as many as the setup
/// service keeps records of), so that a few accounts cannot fill it.
pub const MAX_REVOKED_DEVICES_PER_USER: usize = 64;
/// The largest `GetDenyList` answer a follower accepts: a full list (every
/// disabled user and every revoked device, ids and names at their longest)
/// fits with room to spare, where tonic's default of 4 MiB would not.
pub const MAX_DENY_LIST_MESSAGE: usize = 16 << 20;

/// What the list holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyEntries {
    /// Disabled user ids.
    pub disabled: BTreeSet<String>,
    /// (user id, device) → until when (unix seconds) its certificates are
    /// refused.
    pub revoked_devices: BTreeMap<(String, String), i64>,
}

impl DenyEntries {
    /// The entries of a `GetDenyList` answer.
    pub fn from_proto(resp: &sesphr::proto::GetDenyListResponse) -> Self {
        DenyEntries {
            disabled: resp.disabled_user_ids.iter().cloned().collect(),
            revoked_devices: resp
                .revoked_devices
                .iter()
                .map(|d| ((d.user_id.clone(), d.device.clone()), d.until))
                .collect(),
        }
    }

    /// The revoked devices as `GetDenyList` sends them (sorted).
    pub fn revoked_to_proto(&self) -> Vec<sesphr::proto::RevokedDevice> {
        self.revoked_devices
            .iter()
            .map(|((user_id, device), until)| sesphr::proto::RevokedDevice {
                user_id: user_id.clone(),
                device: device.clone(),
                until: *until,
            })
            .collect()
    }
}

/// What the list says about one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not disabled (as of a fresh enough copy).
    Allowed,
    /// Disabled.
    Disabled,
    /// The certificate's device was removed by its user.
    DeviceRevoked,
    /// The copy is too old (or was never loaded) to say: refuse.
    Stale(String),
}

#[derive(Debug)]
struct State {
    version: u64,
    entries: DenyEntries,
    /// When AccessPolicy last answered (followers); `None`: never.
    fresh_at: Option<Instant>,
}

/// The disabled users, as this process knows them.
#[derive(Debug)]
pub struct DenyList {
    state: RwLock<State>,
    /// `None` for AccessPolicy's own copy, which is always current.
    max_staleness: Option<Duration>,
}

impl DenyList {
    /// AccessPolicy's copy, loaded from its store.
    pub fn authoritative(version: u64, entries: DenyEntries) -> Self {
        DenyList {
            state: RwLock::new(State {
                version,
                entries,
                fresh_at: Some(Instant::now()),
            }),
            max_staleness: None,
        }
    }

    /// A follower's copy: empty and stale until the first answer.
    pub fn follower(max_staleness: Duration) -> Self {
        DenyList {
            state: RwLock::new(State {
                version: 0,
                entries: DenyEntries::default(),
                fresh_at: None,
            }),
            max_staleness: Some(max_staleness),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user_id` may be served now, calling from a certificate
    /// of `device` (`None`: whatever the device).
    pub fn verdict(&self, user_id: &str, device: Option<&str>) -> Verdict {
        self.verdict_at(user_id, device, Instant::now(), unix_now())
    }

    fn verdict_at(&self, user_id: &str, device: Option<&str>, now: Instant, unix: i64) -> Verdict {
        let state = self.read();
        if let Some(why) = self.staleness(&state, now) {
            return Verdict::Stale(why);
        }
        if state.entries.disabled.contains(user_id) {
            return Verdict::Disabled;
        }
        if let Some(device) = device {
            let key = (user_id.to_owned(), device.to_owned());
            if state
                .entries
                .revoked_devices
                .get(&key)
                .is_some_and(|until| *until > unix)
            {
                return Verdict::DeviceRevoked;
            }
        }
        Verdict::Allowed
    }

    /// Why the copy is too old to go by at `now`, if it is.
    fn staleness(&self, state: &State, now: Instant) -> Option<String> {
        let max = self.max_staleness?;
        match state.fresh_at {
            None => Some(
                "this service has not yet loaded the deny list from AccessPolicy; retry".into(),
            ),
            Some(at) if now.duration_since(at) > max => Some(format!(
                "this service's copy of the deny list is {} s old (AccessPolicy \
                 unreachable); users are refused until it is current",
                now.duration_since(at).as_secs()
            )),
            Some(_) => None,
        }
    }

    /// The version held.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Whether the copy is fresh (always for AccessPolicy's).
    pub fn is_fresh(&self) -> bool {
        self.staleness(&self.read(), Instant::now()).is_none()
    }

    /// Every entry, with the version.
    pub fn snapshot(&self) -> (u64, DenyEntries) {
        let state = self.read();
        (state.version, state.entries.clone())
    }

    /// AccessPolicy's copy after a change: the whole list as the store
    /// now holds it, unless a newer one is already in (concurrent changes
    /// finish in any order).
    pub fn reload(&self, version: u64, entries: DenyEntries) {
        let mut state = self.write();
        if version >= state.version {
            state.version = version;
            state.entries = entries;
        }
    }

    /// A follower took the whole list of `version`, answered at `at`. Polls
    /// are sequential, so the answer is AccessPolicy's current state even
    /// when its version went down (a store restored from a backup): taking
    /// it is the only way to stay equal to it.
    fn replace(&self, version: u64, entries: DenyEntries, at: Instant) {
        let mut state = self.write();
        if version < state.version {
            tracing::warn!(
                held = state.version,
                answered = version,
                "AccessPolicy's deny list version went back (restored store?); following it"
            );
        }
        state.version = version;
        state.entries = entries;
        state.fresh_at = Some(state.fresh_at.map_or(at, |old| old.max(at)));
    }

    /// A follower was told its version is current, answered at `at`.
    fn confirm(&self, at: Instant) {
        let mut state = self.write();
        state.fresh_at = Some(state.fresh_at.map_or(at, |old| old.max(at)));
    }
}

/// Keeps `list` current from AccessPolicy until `shutdown` resolves: one
/// `GetDenyList` per `poll_interval`, each bounded by `timeout`. A copy is
/// as fresh as the moment its request was sent (the answer reflects
/// AccessPolicy's state no earlier than that).
pub async fn follow(
    list: std::sync::Arc<DenyList>,
    client: AccessPolicyClient<Channel>,
    poll_interval: Duration,
    timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let client = client.max_decoding_message_size(MAX_DENY_LIST_MESSAGE);
    let mut failures: u32 = 0;
    loop {
        let sent = Instant::now();
        let mut req = tonic::Request::new(GetDenyListRequest {
            known_version: list.version(),
        });
        req.set_timeout(timeout);
        let mut c = client.clone();
        let answer = tokio::select! {
            _ = &mut shutdown => return,
            a = tokio::time::timeout(timeout, c.get_deny_list(req)) => a,
        };
        match answer {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                if resp.unchanged {
                    list.confirm(sent);
                } else if resp.disabled_user_ids.len() > MAX_DISABLED_USERS
                    || resp.revoked_devices.len() > MAX_REVOKED_DEVICES
                {
                    tracing::warn!(
                        users = resp.disabled_user_ids.len(),
                        devices = resp.revoked_devices.len(),
                        "AccessPolicy sent an oversized deny list; ignored"
                    );
                } else {
                    list.replace(resp.version, DenyEntries::from_proto(&resp), sent);
                }
                if failures > 0 {
                    tracing::info!(failures, "deny list current again");
                }
                failures = 0;
            }
            Ok(Err(status)) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(code = ?status.code(), message = status.message(), failures, "deny list refresh refused");
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(failures, "deny list refresh timed out");
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep_until(sent + poll_interval) => {}
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(ids: &[&str]) -> DenyEntries {
        DenyEntries {
            disabled: ids.iter().map(|s| s.to_string()).collect(),
            ..DenyEntries::default()
        }
    }

    #[test]
    fn authoritative_copy_is_always_current() {
        let list = DenyList::authoritative(3, users(&["mallory"]));
        assert_eq!(list.verdict("mallory", None), Verdict::Disabled);
        assert_eq!(list.verdict("alice", None), Verdict::Allowed);
        list.reload(5, users(&["alice"]));
        // A reload older than what is held is ignored.
        list.reload(4, users(&["mallory"]));
        assert_eq!(list.verdict("mallory", None), Verdict::Allowed);
        assert_eq!(list.verdict("alice", Some("device-1")), Verdict::Disabled);
        assert_eq!(list.snapshot(), (5, users(&["alice"])));
    }

    /// A list at both caps, every id and name at its longest, still fits
    /// one answer a follower accepts.
    #[test]
    fn a_full_list_fits_one_answer() {
        use prost::Message as _;
        let id = |i: usize| format!("{i:0>64}");
        let resp = sesphr::proto::GetDenyListResponse {
            version: u64::MAX,
            unchanged: false,
            disabled_user_ids: (0..MAX_DISABLED_USERS).map(id).collect(),
            revoked_devices: (0..MAX_REVOKED_DEVICES)
                .map(|i| sesphr::proto::RevokedDevice {
                    user_id: id(i),
                    device: "d".repeat(32),
                    until: i64::MAX,
                })
                .collect(),
        };
        let len = resp.encoded_len();
        assert!(len > 4 << 20, "the default limit would do: {len}");
        assert!(len < MAX_DENY_LIST_MESSAGE * 2 / 3, "{len}");
    }

    #[test]
    fn a_revoked_device_is_refused_until_its_certificates_expire() {
        let mut entries = DenyEntries::default();
        entries
            .revoked_devices
            .insert(("alice".into(), "laptop".into()), 1_000);
        let list = DenyList::authoritative(1, entries);
        let now = Instant::now();
        let at = |device, unix| list.verdict_at("alice", device, now, unix);
        assert_eq!(at(Some("laptop"), 999), Verdict::DeviceRevoked);
        assert_eq!(at(Some("phone"), 999), Verdict::Allowed);
        assert_eq!(at(None, 999), Verdict::Allowed);
        assert_eq!(at(Some("laptop"), 1_000), Verdict::Allowed);
        assert_eq!(
            list.verdict_at("bob", Some("laptop"), now, 999),
            Verdict::Allowed
        );
    }

    #[test]
    fn a_follower_refuses_until_loaded_and_once_stale() {
        let list = DenyList::follower(Duration::from_secs(5));
        assert!(matches!(list.verdict("alice", None), Verdict::Stale(_)));
        let t0 = Instant::now();
        let v = |id, at| list.verdict_at(id, None, at, 0);
        list.replace(2, users(&["bob"]), t0);
        assert_eq!(v("alice", t0), Verdict::Allowed);
        assert_eq!(v("bob", t0), Verdict::Disabled);
        let late = t0 + Duration::from_secs(6);
        assert!(matches!(v("alice", late), Verdict::Stale(_)));
        list.confirm(late);
        assert_eq!(v("alice", late), Verdict::Allowed);
        // A version that went back (a restored AccessPolicy) is followed:
        // the follower must equal what AccessPolicy now enforces.
        list.replace(1, users(&["carol"]), late);
        assert_eq!(v("bob", late), Verdict::Allowed);
        assert_eq!(v("carol", late), Verdict::Disabled);
    }
}
