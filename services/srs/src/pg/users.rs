//! The user directory: enrolment and re-enrolment (with or without an
//! invitation) and atomic record changes.

use sesphr_domain::pg::{Pg, pg_error};

use crate::{DomainError, Redeem, UserRecord, codec, devices};

pub(super) use crate::check_redeem;

pub(super) async fn get(pg: &Pg, user_id: &str) -> Result<Option<UserRecord>, DomainError> {
    let conn = pg.client().await?;
    let row = conn
        .query_opt(
            "SELECT record FROM srs.users WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| codec::decode_user(user_id.as_bytes(), r.get(0)))
        .transpose()
}

fn unknown(user_id: &str) -> DomainError {
    DomainError::Unknown(format!("no enrolled user {user_id}"))
}

/// Locks the user's row for the rest of `tx` and decodes it.
async fn lock(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: &str,
) -> Result<UserRecord, DomainError> {
    let row = tx
        .query_opt(
            "SELECT record FROM srs.users WHERE user_id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await
        .map_err(pg_error)?
        .ok_or_else(|| unknown(user_id))?;
    codec::decode_user(user_id.as_bytes(), row.get(0))
}

async fn store(tx: &tokio_postgres::Transaction<'_>, user: &UserRecord) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE srs.users SET role = $2, record = $3 WHERE user_id = $1",
        &[
            &user.user_id,
            &user.role.as_str(),
            &codec::encode_user(user),
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// The row lock serialises changes of one user across replicas, so
/// `change` runs once, on the record as committed by the last writer.
pub(super) async fn update(
    pg: &Pg,
    user_id: &str,
    change: &mut dyn FnMut(&mut UserRecord) -> Result<(), DomainError>,
) -> Result<UserRecord, DomainError> {
    let mut conn = pg.client().await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    let before = lock(&tx, user_id).await?;
    let mut user = before.clone();
    change(&mut user)?;
    crate::check_update(&before, &user)?;
    store(&tx, &user).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(user)
}

/// Marks the invitation used and applies `redeem` in one transaction; any
/// error drops the transaction, so the invitation stays unused.
pub(super) async fn redeem(
    pg: &Pg,
    hash: Option<&[u8; 32]>,
    redeem: &Redeem,
    now: i64,
) -> Result<(), DomainError> {
    let mut conn = pg.client().await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    if let Some(h) = hash {
        // Locked first: a concurrent redemption of the same invitation
        // waits here, then sees it used.
        let row = tx
            .query_opt(
                "SELECT used_at FROM srs.invitations WHERE hash = $1 FOR UPDATE",
                &[&&h[..]],
            )
            .await
            .map_err(pg_error)?
            .ok_or_else(|| DomainError::Unknown("the invitation is not known".into()))?;
        let used_at: i64 = row.get(0);
        if used_at != 0 {
            return Err(DomainError::Conflict("invitation already used".into()));
        }
    }
    match redeem {
        Redeem::Enroll(user) => {
            // The primary key decides a race for the id: the loser's insert
            // waits for the winner's commit and then inserts nothing.
            let n = tx
                .execute(
                    "INSERT INTO srs.users (user_id, role, enrolled_at, record) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING",
                    &[
                        &user.user_id,
                        &user.role.as_str(),
                        &user.enrolled_at,
                        &codec::encode_user(user),
                    ],
                )
                .await
                .map_err(pg_error)?;
            if n == 0 {
                return Err(DomainError::Exists(format!(
                    "user id {} is already enrolled",
                    user.user_id
                )));
            }
        }
        Redeem::Reenroll {
            user_id,
            device,
            certificate_der,
        } => {
            let mut user = lock(&tx, user_id).await?;
            devices::add(&mut user.devices, device.clone())?;
            user.certificate_der = certificate_der.clone();
            store(&tx, &user).await?;
        }
    }
    if let Some(h) = hash {
        tx.execute(
            "UPDATE srs.invitations SET used_at = $2 WHERE hash = $1",
            &[&&h[..], &now],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}
