//! Moving a sled setup-service store into PostgreSQL (`sesphrd migrate`).
//!
//! The whole source is read and decoded first (a damaged source stops the
//! copy before anything is written), then written in one transaction: a
//! copy that fails leaves the destination as it was, so it can simply be
//! run again.

use futures::future::try_join_all;
use sesphr_domain::pg::{is_unique_violation, lock_key, pg_error};
use tokio_postgres::types::ToSql;
use zeroize::Zeroizing;

use super::PgStore;
use crate::{DomainError, Invitation, RecoveryRecord, SrsStore, StoredKfragSet, UserRecord, codec};

/// What [`copy_from_sled`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub users: usize,
    pub invitations: usize,
    pub recovery_setups: usize,
    pub kfrag_sets: usize,
    pub secrets: usize,
}

/// Rows sent before waiting for their answers (the driver pipelines them
/// on the one connection).
const BATCH: usize = 256;

/// A statement parameter borrowed from the decoded source.
type P<'a> = &'a (dyn ToSql + Sync);

/// The sled tree `sesphr_domain::secret` keeps secrets in, and the prefix
/// [`SrsStore`] names its secrets with.
const SECRETS_TREE: &str = "secrets";
const SECRET_PREFIX: &str = "secret/";

struct Source {
    users: Vec<UserRecord>,
    invitations: Vec<([u8; 32], Invitation)>,
    recovery: Vec<(String, RecoveryRecord)>,
    kfrags: Vec<StoredKfragSet>,
    secrets: Vec<(String, Zeroizing<Vec<u8>>)>,
}

fn read(src: &SrsStore) -> Result<Source, DomainError> {
    let mut users = Vec::new();
    for kv in src.users.iter() {
        let (k, v) = kv?;
        users.push(codec::decode_user(&k, &v)?);
    }
    let mut invitations = Vec::new();
    for kv in src.invitations.iter() {
        let (k, v) = kv?;
        let hash = <[u8; 32]>::try_from(&k[..]).map_err(|_| {
            DomainError::Corrupt(format!("an invitation key is {} bytes, not 32", k.len()))
        })?;
        invitations.push((hash, codec::decode_invitation(&v)?));
    }
    let mut recovery = Vec::new();
    for kv in src.recovery.iter() {
        let (k, v) = kv?;
        let owner = String::from_utf8(k.to_vec())
            .map_err(|_| DomainError::Corrupt("a recovery setup's owner is not UTF-8".into()))?;
        let setup = codec::decode_recovery(&owner, &v)?;
        recovery.push((owner, setup));
    }
    let kfrags = src.kfrag_sets()?;
    let mut secrets = Vec::new();
    // Opening a tree creates it: look first, so reading changes nothing.
    if src
        .db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == SECRETS_TREE.as_bytes())
    {
        for kv in src.db.open_tree(SECRETS_TREE)?.scan_prefix(SECRET_PREFIX) {
            let (k, v) = kv?;
            let v = Zeroizing::new(v.to_vec());
            let name = std::str::from_utf8(&k[SECRET_PREFIX.len()..])
                .map_err(|_| DomainError::Corrupt("a secret's name is not UTF-8".into()))?;
            if v.len() != sesphr_domain::secret::SECRET_LEN {
                return Err(DomainError::Corrupt(format!(
                    "secret {name} is not {} bytes",
                    sesphr_domain::secret::SECRET_LEN
                )));
            }
            secrets.push((name.to_owned(), v));
        }
    }
    Ok(Source {
        users,
        invitations,
        recovery,
        kfrags,
        secrets,
    })
}

/// Sums the rows `stmts` wrote, sending [`BATCH`] at a time.
async fn run_all<F>(futs: impl IntoIterator<Item = F>) -> Result<usize, tokio_postgres::Error>
where
    F: std::future::Future<Output = Result<u64, tokio_postgres::Error>>,
{
    let mut total = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    let mut iter = futs.into_iter().peekable();
    while iter.peek().is_some() {
        batch.extend(iter.by_ref().take(BATCH));
        total += try_join_all(batch.drain(..))
            .await?
            .into_iter()
            .sum::<u64>();
    }
    Ok(usize::try_from(total).unwrap_or(usize::MAX))
}

/// Copies `src`'s users, invitations, recovery setups, kfrag sets and
/// service secrets into `dst`, in one transaction. Refused (`Exists`) when
/// `dst` already holds users: merging two directories is not a copy. A
/// secret `dst` already drew differently is refused too (`Conflict`), since
/// something may have been derived from it.
pub fn copy_from_sled(src: &SrsStore, dst: &PgStore) -> Result<CopyReport, DomainError> {
    let source = read(src)?;
    dst.pg.block_on(write(dst, &source))
}

async fn write(dst: &PgStore, s: &Source) -> Result<CopyReport, DomainError> {
    let mut conn = dst.pg.client().await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    // Two copies at once would each see no users; one waits for the other.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("srs.copy_from_sled")],
    )
    .await
    .map_err(pg_error)?;
    let has_users: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM srs.users)", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if has_users {
        return Err(DomainError::Exists(
            "the destination database already holds users; copy into an empty one".into(),
        ));
    }

    let insert_user = tx
        .prepare(
            "INSERT INTO srs.users (user_id, role, enrolled_at, record) VALUES ($1, $2, $3, $4)",
        )
        .await
        .map_err(pg_error)?;
    let records: Vec<_> = s
        .users
        .iter()
        .map(|u| (u, u.role.as_str(), codec::encode_user(u)))
        .collect();
    let users = run_all(records.iter().map(|(u, role, rec)| {
        tx.execute_raw(&insert_user, [&u.user_id as P, role, &u.enrolled_at, rec])
    }))
    .await
    .map_err(|e| {
        // A replica enrolled someone while the copy ran.
        if is_unique_violation(&e) {
            DomainError::Conflict("a user was enrolled in the destination during the copy".into())
        } else {
            pg_error(e)
        }
    })?;

    // The rest may already be there from an earlier copy of a source
    // without users; what is there is kept.
    let insert_inv = tx
        .prepare(
            "INSERT INTO srs.invitations \
                 (hash, user_id, role, issued_by, issued_at, expires_at, used_at, reenrollment) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (hash) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let rows: Vec<_> = s
        .invitations
        .iter()
        .map(|(h, i)| (&h[..], i, i.role.as_str()))
        .collect();
    let invitations = run_all(rows.iter().map(|(h, i, role)| {
        tx.execute_raw(
            &insert_inv,
            [
                h as P,
                &i.user_id,
                role,
                &i.issued_by,
                &i.issued_at,
                &i.expires_at,
                &i.used_at,
                &i.reenrollment,
            ],
        )
    }))
    .await
    .map_err(pg_error)?;

    let insert_rec = tx
        .prepare(
            "INSERT INTO srs.recovery (owner_id, record) VALUES ($1, $2) \
             ON CONFLICT (owner_id) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let rows: Vec<_> = s
        .recovery
        .iter()
        .map(|(o, r)| (o, codec::encode_recovery(r)))
        .collect();
    let recovery_setups = run_all(
        rows.iter()
            .map(|(o, rec)| tx.execute_raw(&insert_rec, [o as P, rec])),
    )
    .await
    .map_err(pg_error)?;

    let insert_kfrags = tx
        .prepare(
            "INSERT INTO srs.kfrags (owner_id, partition, grantee_id, epoch, kfrag_set) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner_id, partition, grantee_id, epoch) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let rows: Vec<_> = s
        .kfrags
        .iter()
        .map(|(o, p, g, e, set)| (o, p, g, i64::from(*e), codec::encode_kfrags(set)))
        .collect();
    let kfrag_sets = run_all(
        rows.iter()
            .map(|(o, p, g, e, v)| tx.execute_raw(&insert_kfrags, [o as P, p, g, e, v])),
    )
    .await
    .map_err(pg_error)?;

    let mut secrets = 0;
    for (name, value) in &s.secrets {
        secrets += tx
            .execute(
                "INSERT INTO srs.secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[name, &value.as_slice()],
            )
            .await
            .map_err(pg_error)? as usize;
        let stored: Zeroizing<Vec<u8>> = Zeroizing::new(
            tx.query_one("SELECT value FROM srs.secrets WHERE name = $1", &[name])
                .await
                .map_err(pg_error)?
                .get(0),
        );
        if stored.as_slice() != value.as_slice() {
            return Err(DomainError::Conflict(format!(
                "the destination already holds a different secret {name}; copy into an empty \
                 database"
            )));
        }
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(CopyReport {
        users,
        invitations,
        recovery_setups,
        kfrag_sets,
        secrets,
    })
}
