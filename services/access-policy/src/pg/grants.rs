//! Grants, revokes and checks: each reads and changes the grants inside
//! the transaction that appends its audit entry (see [`super`]).

use std::time::Instant;

use sesphr_identity::{Role, validate_partition, validate_user_id};
use tokio_postgres::GenericClient;

use super::PgPolicyStore;
use super::rows::{GRANT_COLUMNS, grant_from_row, q};
use crate::coalesce;
use crate::{
    AuditAction, AuditEvent, CheckQuery, Decision, DomainError, Grant, Outcome, check_actor,
    check_field, evaluate, validate_grant,
};

/// The grant for (owner, partition, grantee), as of the transaction.
async fn stored<C: GenericClient>(
    c: &C,
    owner_id: &str,
    partition: &str,
    grantee_id: &str,
) -> Result<Option<Grant>, DomainError> {
    let row = q(c.query_opt(
        &format!(
            "SELECT {GRANT_COLUMNS} FROM access_policy.grants \
             WHERE owner_id = $1 AND partition = $2 AND grantee_id = $3"
        ),
        &[&owner_id, &partition, &grantee_id],
    ))
    .await?;
    row.as_ref().map(grant_from_row).transpose()
}

/// Whether `user_id` is on the deny list, as of the transaction.
pub(super) async fn is_disabled<C: GenericClient>(
    c: &C,
    user_id: &str,
) -> Result<bool, DomainError> {
    let row = q(c.query_opt(
        "SELECT 1 FROM access_policy.deny_users WHERE user_id = $1",
        &[&user_id],
    ))
    .await?;
    Ok(row.is_some())
}

/// Stores `g` (replacing any grant of the same key).
pub(super) async fn put<C: GenericClient>(c: &C, g: &Grant) -> Result<(), DomainError> {
    q(c.execute(
        &format!(
            "INSERT INTO access_policy.grants ({GRANT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (owner_id, partition, grantee_id) DO UPDATE SET \
             grantee_role = EXCLUDED.grantee_role, epoch_min = EXCLUDED.epoch_min, \
             epoch_max = EXCLUDED.epoch_max, not_before = EXCLUDED.not_before, \
             expires_at = EXCLUDED.expires_at, granted_at = EXCLUDED.granted_at"
        ),
        &[
            &g.owner_id,
            &g.partition,
            &g.grantee_id,
            &g.grantee_role.as_str(),
            &i64::from(g.epoch_min),
            &g.epoch_max.map(i64::from),
            &g.not_before,
            &g.expires_at,
            &g.granted_at,
        ],
    ))
    .await?;
    Ok(())
}

pub(super) fn grant(
    s: &PgPolicyStore,
    grant: Grant,
    actor: &str,
    now: i64,
) -> Result<Grant, DomainError> {
    check_actor(actor)?;
    validate_grant(&grant, now)?;
    let grant = Grant {
        granted_at: now,
        ..grant
    };
    s.locked_one(now, async |tx| {
        if is_disabled(tx, &grant.grantee_id).await? {
            return Err(DomainError::NotEntitled(format!(
                "{} is disabled by an operator: no grants to it",
                grant.grantee_id
            )));
        }
        let old = stored(tx, &grant.owner_id, &grant.partition, &grant.grantee_id).await;
        put(tx, &grant).await?;
        let mut detail = grant.describe();
        match old {
            Ok(Some(old)) => detail.push_str(&format!("; replaces {}", old.describe())),
            Ok(None) => {}
            // As the sled store does: an unreadable grant is replaced.
            Err(DomainError::Corrupt(_)) => detail.push_str("; replaces an unreadable grant"),
            Err(e) => return Err(e),
        }
        Ok((
            (),
            AuditEvent {
                actor: actor.to_owned(),
                action: AuditAction::Grant,
                owner_id: grant.owner_id.clone(),
                partition: grant.partition.clone(),
                subject: grant.grantee_id.clone(),
                record_id: String::new(),
                outcome: Outcome::Ok,
                detail,
            },
        ))
    })?;
    Ok(grant)
}

pub(super) fn revoke(
    s: &PgPolicyStore,
    owner_id: &str,
    partition: &str,
    grantee_id: &str,
    actor: &str,
    now: i64,
) -> Result<Grant, DomainError> {
    check_actor(actor)?;
    validate_user_id(owner_id)?;
    validate_partition(partition)?;
    validate_user_id(grantee_id)?;
    let (old, _) = s.locked_one(now, async |tx| {
        let Some(old) = stored(tx, owner_id, partition, grantee_id).await? else {
            return Err(DomainError::Unknown(format!(
                "no grant from {owner_id} to {grantee_id} on partition {partition}"
            )));
        };
        q(tx.execute(
            "DELETE FROM access_policy.grants \
             WHERE owner_id = $1 AND partition = $2 AND grantee_id = $3",
            &[&owner_id, &partition, &grantee_id],
        ))
        .await?;
        let ev = AuditEvent {
            actor: actor.to_owned(),
            action: AuditAction::Revoke,
            owner_id: owner_id.to_owned(),
            partition: partition.to_owned(),
            subject: grantee_id.to_owned(),
            record_id: String::new(),
            outcome: Outcome::Ok,
            detail: format!("revoked {}", old.describe()),
        };
        Ok((old, ev))
    })?;
    Ok(old)
}

/// Decides and audits `q` (the rule of the crate docs). The deny list and
/// the grant are read in the transaction that appends the decision, under
/// the log lock, so the log order is the decision order at every replica.
pub(super) fn check(
    s: &PgPolicyStore,
    q: &CheckQuery,
    actor: &str,
    now: i64,
) -> Result<Decision, DomainError> {
    check_actor(actor)?;
    validate_user_id(&q.owner_id)?;
    validate_partition(&q.partition)?;
    validate_user_id(&q.grantee_id)?;
    let record_id = q.record_id.clone().unwrap_or_default();
    check_field("record_id", &record_id)?;
    let is_owner = q.grantee_id == q.owner_id && q.grantee_role == Role::Patient;
    let at = Instant::now();
    let (decision, _) = s.locked(now, async |tx| {
        let decision = if is_disabled(tx, &q.grantee_id).await? {
            Decision::deny_telling(
                format!("{} is disabled by an operator", q.grantee_id),
                "user disabled",
            )
        } else if is_owner {
            Decision::allow("owner has access to their own records")
        } else {
            match stored(tx, &q.owner_id, &q.partition, &q.grantee_id).await? {
                None => Decision::deny_telling(
                    format!(
                        "no grant from {} to {} on partition {}",
                        q.owner_id, q.grantee_id, q.partition
                    ),
                    "no grant covers it",
                ),
                Some(grant) => {
                    let mut decision = evaluate(&grant, q, now);
                    if decision.allowed {
                        decision.grant = Some(grant);
                    }
                    decision
                }
            }
        };
        let ev = AuditEvent {
            actor: actor.to_owned(),
            action: AuditAction::Check(q.action),
            owner_id: q.owner_id.clone(),
            partition: q.partition.clone(),
            subject: format!("{}/{}", q.grantee_role, q.grantee_id),
            record_id: record_id.clone(),
            outcome: if decision.allowed {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            detail: format!("epoch {}: {}", q.epoch, decision.reason),
        };
        let events = if decision.allowed {
            vec![ev]
        } else {
            let who = coalesce::refused_identity(&ev).to_owned();
            s.lock_coalesce().refusals.admit(&who, ev, now, at)
        };
        Ok((decision, events))
    })?;
    Ok(decision)
}

/// Every grant `owner_id` has given, by partition then grantee.
pub(super) fn given(s: &PgPolicyStore, owner_id: &str) -> Result<Vec<Grant>, DomainError> {
    validate_user_id(owner_id)?;
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        let rows = q(conn.query(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM access_policy.grants \
                 WHERE owner_id = $1 ORDER BY partition, grantee_id"
            ),
            &[&owner_id],
        ))
        .await?;
        rows.iter().map(grant_from_row).collect()
    })
}

/// Every grant naming `grantee_id`, by owner then partition.
pub(super) fn received(s: &PgPolicyStore, grantee_id: &str) -> Result<Vec<Grant>, DomainError> {
    validate_user_id(grantee_id)?;
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        let rows = q(conn.query(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM access_policy.grants \
                 WHERE grantee_id = $1 ORDER BY owner_id, partition"
            ),
            &[&grantee_id],
        ))
        .await?;
        rows.iter().map(grant_from_row).collect()
    })
}
