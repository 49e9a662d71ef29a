//! The deny list in PostgreSQL (tables `deny_users`, `deny_devices`,
//! `deny_version`). A change and its audit entry commit together under the
//! log lock, which also orders the version: it is read and bumped inside
//! that transaction, so it grows strictly across replicas. The rules and
//! the audit texts are the sled store's (see [`crate::deny`]).

use sesphr_identity::validate_user_id;
use sesphr_mesh::deny::{
    DenyEntries, MAX_DISABLED_USERS, MAX_REVOKED_DEVICES, MAX_REVOKED_DEVICES_PER_USER,
};
use tokio_postgres::{GenericClient, IsolationLevel};

use super::PgPolicyStore;
use super::grants::is_disabled;
use super::rows::{col, q, to_i64, to_u64};
use crate::deny::{check_device_name, check_reason, device_event, user_status_event};
use crate::{DomainError, check_actor};

async fn version<C: GenericClient>(c: &C) -> Result<u64, DomainError> {
    let row = q(c.query_one("SELECT version FROM access_policy.deny_version", &[])).await?;
    to_u64(col(&row, 0)?, "deny-list version")
}

async fn set_version<C: GenericClient>(c: &C, v: u64) -> Result<(), DomainError> {
    let v = to_i64(v, "deny-list version")?;
    q(c.execute("UPDATE access_policy.deny_version SET version = $1", &[&v])).await?;
    Ok(())
}

pub(super) fn set_user_status(
    s: &PgPolicyStore,
    user_id: &str,
    disabled: bool,
    reason: &str,
    actor: &str,
    now: i64,
) -> Result<(bool, u64), DomainError> {
    check_actor(actor)?;
    validate_user_id(user_id)?;
    check_reason(reason)?;
    let ((changed, version), _) = s.locked_one(now, async |tx| {
        if disabled {
            let row = q(tx.query_one("SELECT count(*) FROM access_policy.deny_users", &[])).await?;
            let n: i64 = col(&row, 0)?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_DISABLED_USERS {
                return Err(DomainError::UsedUp(format!(
                    "at most {MAX_DISABLED_USERS} users can be disabled at once"
                )));
            }
        }
        let current = self::version(tx).await?;
        let was = is_disabled(tx, user_id).await?;
        let changed = was != disabled;
        let version = if changed { current + 1 } else { current };
        if changed {
            if disabled {
                let v = to_i64(version, "deny-list version")?;
                q(tx.execute(
                    "INSERT INTO access_policy.deny_users (user_id, version) VALUES ($1, $2)",
                    &[&user_id, &v],
                ))
                .await?;
            } else {
                q(tx.execute(
                    "DELETE FROM access_policy.deny_users WHERE user_id = $1",
                    &[&user_id],
                ))
                .await?;
            }
            set_version(tx, version).await?;
        }
        let event = user_status_event(actor, user_id, disabled, changed, version, reason);
        Ok(((changed, version), event))
    })?;
    Ok((changed, version))
}

pub(super) fn revoke_device(
    s: &PgPolicyStore,
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
    let ((changed, version), _) = s.locked_one(now, async |tx| {
        // Entries whose time has passed go in the same change (this one's
        // own entry is kept: it is either extended or left as it is).
        let dropped = q(tx.execute(
            "DELETE FROM access_policy.deny_devices \
             WHERE until <= $3 AND NOT (user_id = $1 AND device = $2)",
            &[&user_id, &device, &now],
        ))
        .await?;
        let row = q(tx.query_one(
            "SELECT count(*), count(*) FILTER (WHERE user_id = $1) \
             FROM access_policy.deny_devices WHERE NOT (user_id = $1 AND device = $2)",
            &[&user_id, &device],
        ))
        .await?;
        let count = |i| -> Result<usize, DomainError> {
            let n: i64 = col(&row, i)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        };
        let (live, of_user) = (count(0)?, count(1)?);
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
        let current = self::version(tx).await?;
        let held: Option<i64> = q(tx.query_opt(
            "SELECT until FROM access_policy.deny_devices WHERE user_id = $1 AND device = $2",
            &[&user_id, &device],
        ))
        .await?
        .map(|r| col(&r, 0))
        .transpose()?;
        // A later `until` extends the entry; an earlier one changes nothing
        // (the entry already covers it).
        let changed = held.is_none_or(|held| held <= now || held < until) && until > now;
        let version = if changed || dropped > 0 {
            current + 1
        } else {
            current
        };
        if changed {
            let v = to_i64(version, "deny-list version")?;
            q(tx.execute(
                "INSERT INTO access_policy.deny_devices (user_id, device, until, version) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device) \
                 DO UPDATE SET until = EXCLUDED.until, version = EXCLUDED.version",
                &[&user_id, &device, &until, &v],
            ))
            .await?;
        }
        if version != current {
            set_version(tx, version).await?;
        }
        let event = device_event(actor, user_id, device, until, changed, version, reason);
        Ok(((changed, version), event))
    })?;
    Ok((changed, version))
}

/// The version and every entry, read in one snapshot so they agree.
pub(super) fn list(s: &PgPolicyStore) -> Result<(u64, DenyEntries), DomainError> {
    s.pg.block_on(async {
        let mut conn = s.pg.client().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = q(client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start())
        .await?;
        let version = version(&tx).await?;
        let mut entries = DenyEntries::default();
        for row in q(tx.query("SELECT user_id FROM access_policy.deny_users", &[])).await? {
            entries.disabled.insert(col(&row, 0)?);
        }
        for row in q(tx.query(
            "SELECT user_id, device, until FROM access_policy.deny_devices",
            &[],
        ))
        .await?
        {
            entries
                .revoked_devices
                .insert((col(&row, 0)?, col(&row, 1)?), col(&row, 2)?);
        }
        q(tx.commit()).await?;
        Ok((version, entries))
    })
}
