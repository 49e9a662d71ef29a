//! The setup service's store in PostgreSQL, so that several replicas of the
//! service share one directory (schema `srs`, see `migrations/`).
//!
//! Every read-modify-write is one transaction that locks what it reads
//! (`SELECT … FOR UPDATE`, or an advisory lock per inviter for the
//! invitation caps), and the once-only rules rest on primary keys: two
//! replicas enrolling one id at once both try the one `INSERT`, and the
//! database lets exactly one of them have it. A call returns only after its
//! transaction committed.
//!
//! The methods are blocking, like sled's: they must run on a blocking
//! thread (the services call the store from the blocking pool), never
//! inside an async task; see [`Pg::block_on`].

mod copy;
mod invitations;
mod users;

use sesphr_domain::pg::{Pg, PgConfig, pg_error};
use sesphr_identity::validate_user_id;
use zeroize::Zeroizing;

use crate::{
    DomainError, Invitation, InviteLimits, KfragSet, MAX_SEALED_SHARE_LEN, MAX_TRUSTEES,
    RecoveryRecord, Redeem, Store, UserRecord, check_len, codec, validate_grant_ids,
};

pub use copy::{CopyReport, copy_from_sled};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The table the migrations record themselves in (one per service, so the
/// services can share a database).
pub const MIGRATIONS_TABLE: &str = "sesphr_srs_migrations";

/// Users, invitations, recovery setups, kfrag sets and service secrets in
/// PostgreSQL. `Send + Sync`: share one behind an `Arc` (one pool inside).
pub struct PgStore {
    pg: Pg,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects (a pool on `runtime`) and brings schema `srs` up to date.
    /// Replicas opening at once migrate once. Blocking: call it from a
    /// blocking thread, not from an async task.
    pub fn open(pg: &PgConfig, runtime: tokio::runtime::Handle) -> Result<Self, DomainError> {
        let pg = Pg::new(pg, runtime)?;
        pg.block_on(pg.migrate(embedded::migrations::runner(), MIGRATIONS_TABLE))?;
        Ok(Self { pg })
    }
}

/// A kfrag set's name in error messages.
fn kfrag_label(
    owner: &str,
    partition: &str,
    grantee: &str,
    epoch: impl std::fmt::Display,
) -> String {
    format!("{owner}/{partition}/{grantee}@{epoch}")
}

/// A stored epoch back as the u32 it was (the column's check keeps it so).
fn epoch_from_db(epoch: i64) -> Result<u32, DomainError> {
    u32::try_from(epoch)
        .map_err(|_| DomainError::Corrupt(format!("a kfrag epoch {epoch} is out of range")))
}

impl Store for PgStore {
    fn user(&self, user_id: &str) -> Result<Option<UserRecord>, DomainError> {
        validate_user_id(user_id)?;
        self.pg.block_on(users::get(&self.pg, user_id))
    }

    fn update_user(
        &self,
        user_id: &str,
        change: &mut dyn FnMut(&mut UserRecord) -> Result<(), DomainError>,
    ) -> Result<UserRecord, DomainError> {
        validate_user_id(user_id)?;
        self.pg.block_on(users::update(&self.pg, user_id, change))
    }

    fn put_recovery(&self, owner_id: &str, setup: RecoveryRecord) -> Result<(), DomainError> {
        validate_user_id(owner_id)?;
        if setup.shares.len() > MAX_TRUSTEES {
            return Err(DomainError::Malformed(format!(
                "at most {MAX_TRUSTEES} trustees"
            )));
        }
        for (trustee, share) in &setup.shares {
            validate_user_id(trustee)?;
            check_len("sealed share", share, 1, MAX_SEALED_SHARE_LEN)?;
        }
        let record = codec::encode_recovery(&setup);
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            conn.execute(
                "INSERT INTO srs.recovery (owner_id, record) VALUES ($1, $2) \
                 ON CONFLICT (owner_id) DO UPDATE SET record = EXCLUDED.record",
                &[&owner_id, &record],
            )
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn recovery(&self, owner_id: &str) -> Result<Option<RecoveryRecord>, DomainError> {
        validate_user_id(owner_id)?;
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            let row = conn
                .query_opt(
                    "SELECT record FROM srs.recovery WHERE owner_id = $1",
                    &[&owner_id],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| codec::decode_recovery(owner_id, r.get(0)))
                .transpose()
        })
    }

    fn put_invitation(
        &self,
        hash: [u8; 32],
        invitation: Invitation,
        limits: Option<InviteLimits>,
        now: i64,
    ) -> Result<(), DomainError> {
        validate_user_id(&invitation.user_id)?;
        invitations::check_issuer(&invitation.issued_by)?;
        self.pg
            .block_on(invitations::put(&self.pg, &hash, &invitation, limits, now))
    }

    fn invitation(&self, hash: &[u8; 32]) -> Result<Option<Invitation>, DomainError> {
        self.pg.block_on(invitations::get(&self.pg, hash))
    }

    fn redeem_invitation(
        &self,
        hash: Option<&[u8; 32]>,
        redeem: Redeem,
        now: i64,
    ) -> Result<(), DomainError> {
        users::check_redeem(&redeem)?;
        self.pg
            .block_on(users::redeem(&self.pg, hash, &redeem, now))
    }

    fn put_kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        grantee_id: &str,
        set: KfragSet,
    ) -> Result<(), DomainError> {
        crate::check_kfrag_set(owner_id, partition, grantee_id, &set)?;
        let value = codec::encode_kfrags(&set);
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            conn.execute(
                "INSERT INTO srs.kfrags (owner_id, partition, grantee_id, epoch, kfrag_set) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (owner_id, partition, grantee_id, epoch) \
                 DO UPDATE SET kfrag_set = EXCLUDED.kfrag_set",
                &[
                    &owner_id,
                    &partition,
                    &grantee_id,
                    &i64::from(epoch),
                    &value,
                ],
            )
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        grantee_id: &str,
    ) -> Result<Option<KfragSet>, DomainError> {
        validate_grant_ids(owner_id, partition, grantee_id)?;
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            let row = conn
                .query_opt(
                    "SELECT kfrag_set FROM srs.kfrags \
                     WHERE owner_id = $1 AND partition = $2 AND grantee_id = $3 AND epoch = $4",
                    &[&owner_id, &partition, &grantee_id, &i64::from(epoch)],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| {
                codec::decode_kfrags(
                    &kfrag_label(owner_id, partition, grantee_id, epoch),
                    r.get(0),
                )
            })
            .transpose()
        })
    }

    fn kfrag_epochs(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
    ) -> Result<Vec<u32>, DomainError> {
        validate_grant_ids(owner_id, partition, grantee_id)?;
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            let rows = conn
                .query(
                    "SELECT epoch FROM srs.kfrags \
                     WHERE owner_id = $1 AND partition = $2 AND grantee_id = $3 ORDER BY epoch",
                    &[&owner_id, &partition, &grantee_id],
                )
                .await
                .map_err(pg_error)?;
            rows.iter().map(|r| epoch_from_db(r.get(0))).collect()
        })
    }

    fn delete_kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        epoch: Option<u32>,
    ) -> Result<usize, DomainError> {
        validate_grant_ids(owner_id, partition, grantee_id)?;
        // One statement either way: a revocation never stops half way.
        let epoch = epoch.map(i64::from);
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            let n = conn
                .execute(
                    "DELETE FROM srs.kfrags \
                     WHERE owner_id = $1 AND partition = $2 AND grantee_id = $3 \
                     AND ($4::bigint IS NULL OR epoch = $4)",
                    &[&owner_id, &partition, &grantee_id, &epoch],
                )
                .await
                .map_err(pg_error)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn users_count(&self) -> Result<u64, DomainError> {
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            let row = conn
                .query_one("SELECT count(*) FROM srs.users", &[])
                .await
                .map_err(pg_error)?;
            let n: i64 = row.get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn service_secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>, DomainError> {
        self.pg.block_on(self.pg.secret("srs.secrets", name))
    }
}

#[cfg(test)]
mod tests;
