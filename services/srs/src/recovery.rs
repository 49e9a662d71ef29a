//! Trustee recovery, as the setup service keeps it: a user stores shares of
//! her master secret, each sealed to one trustee's PRE public key by her
//! client (docs/recovery.md), so the setup service holds only ciphertexts
//! it cannot open; a trustee fetches the share sealed to it when the owner
//! asks for help from a new device, and every release is audited with the
//! owner as subject, so she sees it among her audit entries.

use sesphr::rpc::Rpc;
use sesphr_domain::DomainError;
use sesphr_identity::{Caller, UserId};
use sesphr_mesh::unix_now;

use crate::gate::{AccessGate, off_executor};
use crate::setup::Setup;
use crate::{MAX_SEALED_SHARE_LEN, MAX_TRUSTEES, RecoveryRecord, Store};

/// The fewest trustees a setup may need (one alone could recover).
pub const MIN_THRESHOLD: u32 = 2;

fn user_of(caller: &Caller) -> Result<&UserId, DomainError> {
    caller
        .as_user()
        .map(|(_, id)| id)
        .ok_or_else(|| DomainError::NotEntitled("only users set up recovery".into()))
}

impl<S: Store + ?Sized, G: AccessGate> Setup<S, G> {
    /// Stores the caller's trustee shares (replacing any earlier setup).
    /// Returns the setup's time. Audited.
    pub async fn set_recovery(
        &self,
        caller: &Caller,
        threshold: u32,
        shares: Vec<(String, Vec<u8>)>,
    ) -> Result<i64, DomainError> {
        let trustees: Vec<String> = shares.iter().map(|(t, _)| t.clone()).collect();
        let result = self.set_recovery_checked(caller, threshold, shares).await;
        let about = user_of(caller).map(|u| u.to_string()).unwrap_or_default();
        self.audit_result(
            &caller.to_string(),
            Rpc::SetRecovery,
            &about,
            &result,
            |_| {
                format!(
                    "recovery set up: any {threshold} of {} can rebuild the master secret",
                    trustees.join(", ")
                )
            },
        )
        .await;
        result
    }

    async fn set_recovery_checked(
        &self,
        caller: &Caller,
        threshold: u32,
        mut shares: Vec<(String, Vec<u8>)>,
    ) -> Result<i64, DomainError> {
        let owner = user_of(caller)?.clone();
        let n = shares.len();
        if n > MAX_TRUSTEES || threshold < MIN_THRESHOLD || threshold as usize > n {
            return Err(DomainError::Malformed(format!(
                "a recovery needs {MIN_THRESHOLD} <= threshold <= trustees <= {MAX_TRUSTEES}, \
                 not threshold {threshold} of {n}"
            )));
        }
        shares.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in shares.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(DomainError::Malformed(format!(
                    "trustee {} is named twice",
                    pair[0].0
                )));
            }
        }
        for (trustee, share) in &shares {
            let trustee = UserId::parse(trustee.as_str())?;
            if trustee == owner {
                return Err(DomainError::Malformed(
                    "you cannot be your own trustee".into(),
                ));
            }
            if share.is_empty() || share.len() > MAX_SEALED_SHARE_LEN {
                return Err(DomainError::Malformed(format!(
                    "the share for {trustee} must be 1 to {MAX_SEALED_SHARE_LEN} bytes"
                )));
            }
            self.enrolled(&trustee).await.map_err(|e| match e {
                DomainError::Unknown(_) => {
                    DomainError::Conflict(format!("trustee {trustee} is not enrolled"))
                }
                other => other,
            })?;
        }
        let created_at = unix_now();
        let setup = RecoveryRecord {
            threshold,
            created_at,
            shares,
        };
        let store = self.store.clone();
        let id = owner.to_string();
        off_executor(move || store.put_recovery(&id, setup)).await?;
        Ok(created_at)
    }

    /// The caller's own setup; `Unknown` when it has none.
    pub async fn get_recovery(&self, caller: &Caller) -> Result<RecoveryRecord, DomainError> {
        let owner = user_of(caller)?.to_string();
        let store = self.store.clone();
        let id = owner.clone();
        off_executor(move || store.recovery(&id))
            .await?
            .ok_or_else(|| DomainError::Unknown(format!("{owner} has no recovery set up")))
    }

    /// The share `owner_id` sealed to the caller, released for the recovery
    /// request `request_fingerprint`. Audited with the owner as subject. A
    /// caller who is no trustee of hers hears the same as if she had no
    /// setup.
    pub async fn get_recovery_share(
        &self,
        caller: &Caller,
        owner_id: &UserId,
        request_fingerprint: &str,
    ) -> Result<(RecoveryRecord, Vec<u8>), DomainError> {
        let result = self
            .get_recovery_share_checked(caller, owner_id, request_fingerprint)
            .await;
        self.audit_result(
            &caller.to_string(),
            Rpc::GetRecoveryShare,
            owner_id.as_str(),
            &result,
            |_| {
                format!(
                    "trustee {caller} fetched its recovery share of {owner_id} to approve \
                     recovery request {request_fingerprint}"
                )
            },
        )
        .await;
        result
    }

    async fn get_recovery_share_checked(
        &self,
        caller: &Caller,
        owner_id: &UserId,
        request_fingerprint: &str,
    ) -> Result<(RecoveryRecord, Vec<u8>), DomainError> {
        let trustee = user_of(caller)?.to_string();
        if request_fingerprint.len() != 64
            || !request_fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DomainError::Malformed(
                "request_fingerprint must be 64 lowercase hex digits (from `sesphr recovery \
                 start`)"
                    .into(),
            ));
        }
        let nothing =
            || DomainError::Unknown(format!("{owner_id} has no recovery share for {trustee}"));
        let store = self.store.clone();
        let id = owner_id.to_string();
        let setup = off_executor(move || store.recovery(&id))
            .await?
            .ok_or_else(nothing)?;
        let share = setup
            .shares
            .iter()
            .find(|(t, _)| *t == trustee)
            .map(|(_, s)| s.clone())
            .ok_or_else(nothing)?;
        Ok((setup, share))
    }
}
