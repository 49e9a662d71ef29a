//! Invitations and the per-inviter caps on them.

use sesphr_domain::pg::{Pg, lock_key, pg_error};

use crate::{DomainError, INVITATION_RETENTION_SECS, Invitation, InviteLimits};

/// Longest inviter name kept (`operator/ops`, `patient/alice`: a role and
/// a user id).
const MAX_ISSUER_LEN: usize = 256;

/// An inviter's name fits a text column and the caps' lock key.
pub(super) fn check_issuer(issued_by: &str) -> Result<(), DomainError> {
    if issued_by.is_empty() || issued_by.len() > MAX_ISSUER_LEN || issued_by.contains('\0') {
        return Err(DomainError::Malformed(format!(
            "an invitation's issuer must be 1 to {MAX_ISSUER_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// Forgets the inviter's long-expired invitations, counts the rest against
/// `limits` and stores the new one, all under one advisory lock per
/// inviter: two replicas inviting for the same inviter take turns, so they
/// cannot both pass a cap that only one of them fits under.
pub(super) async fn put(
    pg: &Pg,
    hash: &[u8; 32],
    inv: &Invitation,
    limits: Option<InviteLimits>,
    now: i64,
) -> Result<(), DomainError> {
    let mut conn = pg.client().await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    let key = lock_key(&format!("srs.invitations/{}", inv.issued_by));
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
        .await
        .map_err(pg_error)?;
    tx.execute(
        "DELETE FROM srs.invitations WHERE issued_by = $1 AND expires_at < $2",
        &[
            &inv.issued_by,
            &now.saturating_sub(INVITATION_RETENTION_SECS),
        ],
    )
    .await
    .map_err(pg_error)?;
    let row = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE used_at = 0 AND expires_at > $2), \
                    count(*) FILTER (WHERE issued_at > $3) \
             FROM srs.invitations WHERE issued_by = $1",
            &[&inv.issued_by, &now, &now.saturating_sub(86_400)],
        )
        .await
        .map_err(pg_error)?;
    let open = usize::try_from(row.get::<_, i64>(0)).unwrap_or(usize::MAX);
    let today = usize::try_from(row.get::<_, i64>(1)).unwrap_or(usize::MAX);
    if let Some(limits) = limits {
        let refusal = if open >= limits.open {
            Some(format!(
                "{} already has {open} unused invitations (at most {}); wait until one is \
                 used or expires",
                inv.issued_by, limits.open
            ))
        } else if today >= limits.per_day {
            Some(format!(
                "{} issued {today} invitations in the last 24 hours (at most {})",
                inv.issued_by, limits.per_day
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            // The clean-up stands even when the new one is refused.
            tx.commit().await.map_err(pg_error)?;
            return Err(DomainError::UsedUp(why));
        }
    }
    tx.execute(
        "INSERT INTO srs.invitations \
             (hash, user_id, role, issued_by, issued_at, expires_at, used_at, reenrollment) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (hash) DO UPDATE SET user_id = EXCLUDED.user_id, role = EXCLUDED.role, \
             issued_by = EXCLUDED.issued_by, issued_at = EXCLUDED.issued_at, \
             expires_at = EXCLUDED.expires_at, used_at = EXCLUDED.used_at, \
             reenrollment = EXCLUDED.reenrollment",
        &[
            &&hash[..],
            &inv.user_id,
            &inv.role.as_str(),
            &inv.issued_by,
            &inv.issued_at,
            &inv.expires_at,
            &inv.used_at,
            &inv.reenrollment,
        ],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}

pub(super) async fn get(pg: &Pg, hash: &[u8; 32]) -> Result<Option<Invitation>, DomainError> {
    let conn = pg.client().await?;
    let row = conn
        .query_opt(
            "SELECT user_id, role, issued_by, issued_at, expires_at, used_at, reenrollment \
             FROM srs.invitations WHERE hash = $1",
            &[&&hash[..]],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| from_row(&r)).transpose()
}

pub(super) fn from_row(r: &tokio_postgres::Row) -> Result<Invitation, DomainError> {
    let role: String = r.get("role");
    Ok(Invitation {
        user_id: r.get("user_id"),
        role: role.parse().map_err(|_| {
            DomainError::Corrupt(format!("an invitation has unknown role {role:?}"))
        })?,
        issued_by: r.get("issued_by"),
        issued_at: r.get("issued_at"),
        expires_at: r.get("expires_at"),
        used_at: r.get("used_at"),
        reenrollment: r.get("reenrollment"),
    })
}
