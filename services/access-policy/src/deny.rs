//! The deny list as AccessPolicy stores it: the users an operator
//! disabled, and a version that grows with every change.
//!
//! A status change and its audit entry commit in one batch transaction (see
//! [`crate::commit`]), like a grant, and checks and grants read the list in
//! that same transaction: no check committed after a disable can allow the
//! disabled grantee. The services and nodes learn the list from
//! `GetDenyList` (`sesphr_mesh::deny` says how, and how stale it may get).
//!
//! Stored in the `deny` tree: `user id → version u64 BE` for each disabled
//! user, and `0x00 "version" → u64 BE`, the list's version (user ids never
//! start with 0x00).

use sesphr_identity::validate_user_id;

use crate::commit::OpCtx;
use crate::vocab::{AuditAction, Outcome};
use crate::{AuditEvent, DomainError, PolicyStore, check_actor, check_field};
use sesphr::rpc::Rpc;

const VERSION_KEY: &[u8] = b"\0version";

fn version_of(v: &[u8]) -> Result<u64, DomainError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| DomainError::Corrupt("a deny-list version is not 8 bytes".into()))
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
        check_field("reason", reason)?;
        if reason.len() > 256 {
            return Err(DomainError::Malformed(
                "reason must be at most 256 bytes".into(),
            ));
        }
        if disabled && self.deny.len() > sesphr_mesh::deny::MAX_DISABLED_USERS {
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
            let (rpc, verb) = if disabled {
                (Rpc::DisableUser, "disabled")
            } else {
                (Rpc::EnableUser, "enabled")
            };
            let mut detail = if changed {
                format!("{verb} {user_id} (deny list version {version})")
            } else {
                format!("{user_id} was already {verb}")
            };
            if !reason.is_empty() {
                detail.push_str(&format!(": {reason}"));
            }
            let event = AuditEvent {
                actor,
                action: AuditAction::Served(rpc),
                owner_id: String::new(),
                partition: String::new(),
                subject: user_id,
                record_id: String::new(),
                outcome: Outcome::Ok,
                detail,
            };
            Ok(((changed, version), event))
        })?;
        Ok((changed, version))
    }

    /// The list's version and every disabled user id, sorted.
    pub fn deny_list(&self) -> Result<(u64, Vec<String>), DomainError> {
        let mut version = 0;
        let mut ids = Vec::new();
        for item in self.deny.iter() {
            let (k, v) = item?;
            if k.as_ref() == VERSION_KEY {
                version = version_of(&v)?;
            } else {
                let id = std::str::from_utf8(&k)
                    .map_err(|_| DomainError::Corrupt("a deny-list id is not UTF-8".into()))?;
                ids.push(id.to_owned());
            }
        }
        Ok((version, ids))
    }
}
