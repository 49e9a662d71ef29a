//! The deny list as AccessPolicy stores it: the users an operator
//! disabled, the devices users removed, and a version that grows with
//! every change.
//!
//! A status change and its audit entry commit in one batch transaction (see
//! [`crate::commit`]), like a grant, and checks and grants read the list in
//! that same transaction: no check committed after a disable can allow the
//! disabled grantee. The services and nodes learn the list from
//! `GetDenyList` (`sesphr_mesh::deny` says how, and how stale it may get).
//!
//! Stored in the `deny` tree: `user id → version u64 BE` for each disabled
//! user, `0x01 user id 0x00 device → version u64 BE ‖ until i64 BE` for
//! each revoked device, and `0x00 "version" → u64 BE`, the list's version
//! (user ids never start with 0x00 or 0x01, nor contain 0x00).

use sesphr_identity::validate_user_id;
use sesphr_mesh::deny::{DenyEntries, MAX_REVOKED_DEVICES, MAX_REVOKED_DEVICES_PER_USER};

use crate::commit::OpCtx;
use crate::vocab::{AuditAction, Outcome};
use crate::{AuditEvent, DomainError, PolicyStore, check_actor, check_field};
use sesphr::rpc::Rpc;

const VERSION_KEY: &[u8] = b"\0version";
const DEVICE_PREFIX: u8 = 0x01;

fn device_key(user_id: &str, device: &str) -> Vec<u8> {
    let mut k = vec![DEVICE_PREFIX];
    k.extend_from_slice(user_id.as_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k
}

pub use sesphr_identity::MAX_DEVICE_NAME_LEN;

/// A device name as the deny list keys it: the mesh's one rule
/// ([`sesphr_identity::validate_device_name`]), checked by every backend
/// here.
pub(crate) fn check_device_name(device: &str) -> Result<(), DomainError> {
    sesphr_identity::validate_device_name(device).map_err(|e| DomainError::Malformed(e.to_string()))
}

/// The reason audited with a deny-list change: a printable field of at
/// most 256 bytes.
pub(crate) fn check_reason(reason: &str) -> Result<(), DomainError> {
    check_field("reason", reason)?;
    if reason.len() > 256 {
        return Err(DomainError::Malformed(
            "reason must be at most 256 bytes".into(),
        ));
    }
    Ok(())
}

fn version_of(v: &[u8]) -> Result<u64, DomainError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| DomainError::Corrupt("a deny-list version is not 8 bytes".into()))
}

/// The audit entry of a user's disable or enable (every backend writes
/// this one): what changed, or that nothing did, and the reason.
pub(crate) fn user_status_event(
    actor: &str,
    user_id: &str,
    disabled: bool,
    changed: bool,
    version: u64,
    reason: &str,
) -> AuditEvent {
    let (rpc, verb) = if disabled {
        (Rpc::DisableUser, "disabled")
    } else {
        (Rpc::EnableUser, "enabled")
    };
    let detail = if changed {
        format!("{verb} {user_id} (deny list version {version})")
    } else {
        format!("{user_id} was already {verb}")
    };
    deny_event(actor, rpc, user_id, detail, reason)
}

/// The audit entry of a device's revocation (every backend writes this
/// one).
pub(crate) fn device_event(
    actor: &str,
    user_id: &str,
    device: &str,
    until: i64,
    changed: bool,
    version: u64,
    reason: &str,
) -> AuditEvent {
    let detail = if changed {
        format!("revoked device {device} of {user_id} until {until} (deny list version {version})")
    } else {
        format!("device {device} of {user_id} was already revoked")
    };
    deny_event(actor, Rpc::RevokeDevice, user_id, detail, reason)
}

fn deny_event(
    actor: &str,
    rpc: Rpc,
    subject: &str,
    mut detail: String,
    reason: &str,
) -> AuditEvent {
    if !reason.is_empty() {
        detail.push_str(&format!(": {reason}"));
    }
    AuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::Served(rpc),
        owner_id: String::new(),
        partition: String::new(),
        subject: subject.to_owned(),
        record_id: String::new(),
        outcome: Outcome::Ok,
        detail,
    }
}

fn decode_device_value(v: &[u8]) -> Result<(u64, i64), DomainError> {
    let arr: [u8; 16] = v
        .try_into()
        .map_err(|_| DomainError::Corrupt("a revoked-device entry is not 16 bytes".into()))?;
    let (a, b) = arr.split_at(8);
    Ok((
        u64::from_be_bytes(a.try_into().expect("8 bytes")),
        i64::from_be_bytes(b.try_into().expect("8 bytes")),
    ))
}

/// Whether `user_id` is disabled, as of the batch's transaction.
pub(crate) fn is_disabled(cx: &OpCtx<'_>, user_id: &str) -> Result<bool, DomainError> {
    Ok(cx.deny_entry(user_id.as_bytes())?.is_some())
}

impl PolicyStore {
    /// Disables or enables `user_id` and audits it (`actor`, with
    /// `reason`). Returns whether the status changed and the list's version
    /// after it; a no-op change is audited too, and bumps nothing.
    pub fn set_user_status(
        &self,
        user_id: &str,
        disabled: bool,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        check_actor(actor)?;
        validate_user_id(user_id)?;
        check_reason(reason)?;
        if disabled && self.disabled_count()? >= sesphr_mesh::deny::MAX_DISABLED_USERS {
            return Err(DomainError::UsedUp(format!(
                "at most {} users can be disabled at once",
                sesphr_mesh::deny::MAX_DISABLED_USERS
            )));
        }
        let (user_id, reason, actor) = (user_id.to_owned(), reason.to_owned(), actor.to_owned());
        let ((changed, version), _) = self.submit_one(now, move |cx| {
            let current = match cx.deny_entry(VERSION_KEY)? {
                Some(v) => version_of(&v)?,
                None => 0,
            };
            let was = is_disabled(cx, &user_id)?;
            let changed = was != disabled;
            let version = if changed { current + 1 } else { current };
            if changed {
                let value = version.to_be_bytes().to_vec();
                cx.put_deny_entry(
                    user_id.as_bytes().to_vec(),
                    disabled.then_some(value.clone()),
                );
                cx.put_deny_entry(VERSION_KEY.to_vec(), Some(value));
            }
            let event = user_status_event(&actor, &user_id, disabled, changed, version, &reason);
            Ok(((changed, version), event))
        })?;
        Ok((changed, version))
    }

    /// How many users are disabled (device entries and the version key do
    /// not count: removed devices must never stop an operator's disable).
    fn disabled_count(&self) -> Result<usize, DomainError> {
        let mut n = 0;
        for key in self.deny.iter().keys() {
            let key = key?;
            if !matches!(key.first(), Some(0x00) | Some(&DEVICE_PREFIX)) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Puts `device` of `user_id` on the list until `until` (unix
    /// seconds), audited (`actor`, with `reason`); entries whose time has
    /// passed are dropped in the same change. Returns whether it was new
    /// and the version after it.
    pub fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        check_actor(actor)?;
        validate_user_id(user_id)?;
        check_device_name(device)?;
        check_reason(reason)?;
        // Expired entries go in the same change (outside the transaction:
        // one found expired now stays expired).
        let key = device_key(user_id, device);
        let user_prefix = device_key(user_id, "");
        let mut expired = Vec::new();
        let (mut live, mut of_user) = (0usize, 0usize);
        for item in self.deny.scan_prefix([DEVICE_PREFIX]) {
            let (k, v) = item?;
            if decode_device_value(&v)?.1 <= now {
                expired.push(k.to_vec());
            } else if k.as_ref() != key.as_slice() {
                live += 1;
                of_user += usize::from(k.starts_with(&user_prefix));
            }
        }
        if of_user >= MAX_REVOKED_DEVICES_PER_USER {
            return Err(DomainError::UsedUp(format!(
                "{user_id} has {of_user} revoked devices whose certificates are still valid \
                 (at most {MAX_REVOKED_DEVICES_PER_USER}); retry once some have expired"
            )));
        }
        if live >= MAX_REVOKED_DEVICES {
            return Err(DomainError::UsedUp(format!(
                "at most {MAX_REVOKED_DEVICES} devices can be revoked at once"
            )));
        }
        let (user_id, device, reason, actor) = (
            user_id.to_owned(),
            device.to_owned(),
            reason.to_owned(),
            actor.to_owned(),
        );
        let ((changed, version), _) = self.submit_one(now, move |cx| {
            let current = match cx.deny_entry(VERSION_KEY)? {
                Some(v) => version_of(&v)?,
                None => 0,
            };
            let held = match cx.deny_entry(&key)? {
                Some(v) => Some(decode_device_value(&v)?.1),
                None => None,
            };
            // A later `until` extends the entry; an earlier one changes
            // nothing (the entry already covers it).
            let changed = held.is_none_or(|held| held <= now || held < until) && until > now;
            let dropped = expired.iter().any(|k| *k != key);
            let version = if changed || dropped {
                current + 1
            } else {
                current
            };
            for k in &expired {
                if *k != key {
                    cx.put_deny_entry(k.clone(), None);
                }
            }
            if changed {
                let mut value = version.to_be_bytes().to_vec();
                value.extend_from_slice(&until.to_be_bytes());
                cx.put_deny_entry(key.clone(), Some(value));
            }
            if version != current {
                cx.put_deny_entry(VERSION_KEY.to_vec(), Some(version.to_be_bytes().to_vec()));
            }
            let event = device_event(&actor, &user_id, &device, until, changed, version, &reason);
            Ok(((changed, version), event))
        })?;
        Ok((changed, version))
    }

    /// The list's version and every entry.
    pub fn deny_list(&self) -> Result<(u64, DenyEntries), DomainError> {
        let mut version = 0;
        let mut entries = DenyEntries::default();
        let corrupt = || DomainError::Corrupt("a deny-list key is not a user id".into());
        for item in self.deny.iter() {
            let (k, v) = item?;
            if k.as_ref() == VERSION_KEY {
                version = version_of(&v)?;
            } else if k.first() == Some(&DEVICE_PREFIX) {
                let text = std::str::from_utf8(&k[1..]).map_err(|_| corrupt())?;
                let (user, device) = text.split_once('\0').ok_or_else(corrupt)?;
                let (_, until) = decode_device_value(&v)?;
                entries
                    .revoked_devices
                    .insert((user.to_owned(), device.to_owned()), until);
            } else {
                let id = std::str::from_utf8(&k).map_err(|_| corrupt())?;
                entries.disabled.insert(id.to_owned());
            }
        }
        Ok((version, entries))
    }
}
