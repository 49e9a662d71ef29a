//! CloudStorage's rules, free of tonic: who may store, read, list and
//! delete which record, the upload protocol, deduplication by proof of
//! ownership and the blob-probe budget.
//!
//! CloudStorage is untrusted for confidentiality: it handles ciphertext only.
//! It is still the gatekeeper of *availability* of ciphertext: a non-owner
//! gets a record only after AccessPolicy allows it (which also enforces the
//! grant's `not_before`, i.e. backward access control). AccessPolicy and the
//! audit trail are reached through [`AccessGate`], the store through
//! [`RecordBackend`], so unit tests drive these rules with a real policy
//! store in-process.
//!
//! Store work runs on tokio's blocking pool inside the methods here (sled
//! flushes are fsyncs): the rules interleave store reads with questions to
//! AccessPolicy (a non-owner listing asks once per partition between two
//! reads), so an adapter could not wrap one call in a blocking task.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sesphr::rpc::Rpc;
use sesphr_dedup::pow::{Challenge, Proof};
use sesphr_identity::{Caller, PartitionName, RecordId, UserId};
use sesphr_mesh::{RateLimiter, unix_now};

use crate::backend::{ChunkIter, RecordBackend};
use crate::{
    BlobRef, ChallengeBook, ChallengePolicy, Cursor, DEFAULT_LIST_LIMIT, DomainError,
    MAX_LIST_LIMIT, NewRecord, PageTokens, RecordMeta, TokenScope, Window,
};

/// Partitions one non-owner listing asks AccessPolicy about; a listing of
/// an owner with more continues through the page token.
pub const MAX_PARTITIONS_PER_LIST: usize = 64;
/// `QueryBlob` calls per second per identity (burst: 4x). Each one is an
/// audited existence probe of somebody's file (under `global` scope).
pub const DEFAULT_BLOB_QUERY_RATE: f64 = 50.0;

/// What a grantee wants to do, as far as CloudStorage asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAction {
    Read,
    List,
}

/// What one access question is about.
#[derive(Debug, Clone, Copy)]
pub struct GateSubject<'a> {
    pub owner_id: &'a str,
    pub partition: &'a str,
    /// 0 for a partition-wide question (listing).
    pub epoch: u32,
    pub record_created_at: Option<i64>,
    /// Empty for a partition-wide question.
    pub record_id: &'a str,
    pub action: GateAction,
}

/// AccessPolicy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// What the grantee may be told about a denial.
    pub caller_reason: String,
    /// The window of the grant that allowed it (none for owners).
    pub window: Option<Window>,
}

/// One audit event, about whose data (empty fields where it does not apply).
#[derive(Debug, Clone, Copy)]
pub struct AuditNote<'a> {
    pub rpc: Rpc,
    pub owner_id: &'a str,
    pub partition: &'a str,
    pub record_id: &'a str,
    /// `"denied"` marks a refusal.
    pub outcome: &'a str,
    pub detail: &'a str,
}

/// The access decisions and audit trail CloudStorage relies on (in the mesh:
/// AccessPolicy, asked over gRPC).
pub trait AccessGate: Send + Sync + 'static {
    /// Whether `grantee` may act on the subject. `Err` means no decision
    /// could be had; the request must then be refused (fail closed).
    fn check(
        &self,
        grantee: &Caller,
        subject: GateSubject<'_>,
    ) -> impl Future<Output = Result<Verdict, DomainError>> + Send;

    /// Records an event. Best effort: it never changes an answer.
    fn audit(&self, caller: &Caller, note: AuditNote<'_>) -> impl Future<Output = ()> + Send;
}

/// Tunable allowances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub challenges: ChallengePolicy,
    /// `QueryBlob` calls per second per caller; the burst is four times it.
    pub blob_query_rate: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            challenges: ChallengePolicy::default(),
            blob_query_rate: DEFAULT_BLOB_QUERY_RATE,
        }
    }
}

/// How a deduplicated upload refers to its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    pub blob: BlobRef,
    /// The answer to the caller's open challenge: the blob is stored
    /// already and no ciphertext follows. `None`: the blob is uploaded.
    pub ownership_proof: Option<Vec<u8>>,
}

/// The header of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutHeader {
    pub record_id: RecordId,
    pub partition: PartitionName,
    pub epoch: u32,
    /// The encoded record header (opaque but checked against the fields).
    pub record_header: Vec<u8>,
    pub ciphertext_size: u64,
    pub dedup: Option<Dedup>,
}

/// Why an upload failed: a rule, or the stream the chunks came on.
#[derive(Debug, thiserror::Error)]
pub enum PutError<E> {
    #[error(transparent)]
    Refused(#[from] DomainError),
    #[error("the upload stream failed: {0}")]
    Stream(E),
}

/// A record the caller may read: its metadata and its content.
pub struct RecordRead {
    pub meta: RecordMeta,
    pub chunks: ChunkIter,
}

/// A listing request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// `None`: the caller's own records.
    pub owner: Option<UserId>,
    pub partition: Option<PartitionName>,
    /// 0: the default page size.
    pub page_size: u32,
    /// Empty: the first page.
    pub page_token: String,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub records: Vec<RecordMeta>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// A stored blob the caller may link to, once it answers the challenge.
#[derive(Debug, Clone)]
pub struct BlobOffer {
    pub challenge: Challenge,
    pub blob_size: u64,
}

/// CloudStorage's domain logic over a record backend and an access gate.
pub struct CloudStorage<G> {
    store: Arc<dyn RecordBackend>,
    gate: G,
    trust_domain: String,
    /// Open proof-of-ownership challenges and how often each was drawn.
    challenges: ChallengeBook,
    page_tokens: PageTokens,
    blob_queries: RateLimiter,
}

/// Runs blocking store work off the async executor.
async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DomainError> + Send + 'static,
) -> Result<T, DomainError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        // Only a panic in the store (or a runtime shutting down) gets here;
        // the client hears an internal storage error.
        tracing::error!(error = %e, "blocking store task failed");
        Err(DomainError::files(format!("store task failed: {e}")))
    })
}

/// The patient a record-owning call acts for. The RPC table admits only
/// patients to these calls; this makes the rule hold without it.
fn owner_of(caller: &Caller) -> Result<&UserId, DomainError> {
    caller
        .as_patient()
        .ok_or_else(|| DomainError::NotEntitled(format!("{caller} does not own records")))
}

impl<G: AccessGate> CloudStorage<G> {
    pub fn new(
        store: Arc<dyn RecordBackend>,
        gate: G,
        trust_domain: String,
        settings: Settings,
    ) -> Result<Self, DomainError> {
        let page_tokens = PageTokens::new(&*store.secret("list-page-tokens")?);
        let rate = settings.blob_query_rate;
        Ok(Self {
            store,
            gate,
            trust_domain,
            challenges: ChallengeBook::new(settings.challenges),
            page_tokens,
            blob_queries: RateLimiter::new(rate, (rate * 4.0) as u32),
        })
    }

    pub fn gate(&self) -> &G {
        &self.gate
    }

    /// The caller as page tokens and the probe budget name it: its full
    /// identity URI, so tokens sealed before stay valid.
    fn caller_key(&self, caller: &Caller) -> String {
        caller
            .identity(&self.trust_domain)
            .map(|id| id.to_string())
            .unwrap_or_else(|| caller.to_string())
    }

    async fn audit_denial(
        &self,
        caller: &Caller,
        rpc: Rpc,
        owner_id: &str,
        record_id: &str,
        error: &DomainError,
    ) {
        let detail = error.to_string();
        let note = AuditNote {
            rpc,
            owner_id,
            partition: "",
            record_id,
            outcome: "denied",
            detail: &detail,
        };
        self.gate.audit(caller, note).await;
    }

    async fn meta(&self, record_id: &RecordId) -> Result<RecordMeta, DomainError> {
        let store = self.store.clone();
        let id = record_id.clone();
        run(move || store.get(&id))
            .await?
            .ok_or_else(|| DomainError::Unknown(format!("no record {record_id}")))
    }

    /// Stores a record: its chunks as they arrive, or, for a deduplicated
    /// record with an ownership proof, a link to the stored blob. Nothing is
    /// visible until the whole record is durable.
    pub async fn put_record<S, E>(
        &self,
        caller: &Caller,
        put: PutHeader,
        mut chunks: S,
    ) -> Result<RecordMeta, PutError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Send,
    {
        let owner = owner_of(caller)?;
        let limits = self.store.limits();
        if put.record_header.is_empty() || put.record_header.len() > limits.max_header_size {
            return Err(DomainError::Malformed(format!(
                "record_header must be 1 to {} bytes",
                limits.max_header_size
            ))
            .into());
        }
        crate::header_check::check_header_matches(
            &put.record_header,
            owner,
            &put.record_id,
            &put.partition,
            put.epoch,
            put.dedup.is_some(),
        )?;
        let new = NewRecord {
            record_id: put.record_id.into_string(),
            owner_id: owner.to_string(),
            partition: put.partition.into_string(),
            epoch: put.epoch,
            header: put.record_header,
            declared_size: put.ciphertext_size,
        };
        let blob = match put.dedup {
            Some(Dedup {
                blob,
                ownership_proof: Some(proof),
            }) => {
                return self
                    .link_by_proof(caller, owner, new, blob, &proof, chunks)
                    .await;
            }
            Some(Dedup { blob, .. }) => Some(blob),
            None => None,
        };
        let store = self.store.clone();
        let mut upload = match blob {
            Some(blob) => run(move || store.begin_blob_upload(new, blob)).await?,
            None => run(move || store.begin_upload(new)).await?,
        };
        // Chunks go to the store as they arrive; dropping `upload` on any
        // error removes what was staged.
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(PutError::Stream)?;
            if chunk.len() > limits.max_chunk_size {
                return Err(DomainError::Malformed(format!(
                    "chunk of {} bytes exceeds {}",
                    chunk.len(),
                    limits.max_chunk_size
                ))
                .into());
            }
            upload = run(move || upload.append(&chunk).map(|()| upload)).await?;
        }
        let meta = run(move || upload.commit(unix_now())).await?;
        tracing::info!(record = %meta.record_id, owner = %meta.owner_id, partition = %meta.partition, bytes = meta.size, "record stored");
        Ok(meta)
    }

    /// Links a new record to a stored blob once the caller answered its
    /// ownership challenge; no ciphertext travels.
    async fn link_by_proof<S, E>(
        &self,
        caller: &Caller,
        owner: &UserId,
        new: NewRecord,
        blob: BlobRef,
        proof: &[u8],
        mut chunks: S,
    ) -> Result<RecordMeta, PutError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Send,
    {
        match chunks.next().await {
            Some(Err(e)) => return Err(PutError::Stream(e)),
            Some(Ok(_)) => {
                return Err(DomainError::Malformed(
                    "no chunks may follow an ownership proof: the blob is already stored".into(),
                )
                .into());
            }
            None => {}
        }
        let challenge = self
            .challenges
            .take(owner, blob.blob_id, unix_now() as u64)?;
        let proof = Proof::from_bytes(proof)
            .map_err(|e| DomainError::Malformed(format!("ownership_proof does not parse: {e}")))?;
        let store = self.store.clone();
        let (o, id) = (owner.to_string(), blob.blob_id);
        let info = run(move || store.blob(&o, &id)).await?.ok_or_else(|| {
            DomainError::Unknown("the blob is no longer stored; upload it".into())
        })?;
        if let Err(e) = sesphr_dedup::verify(&info.root, info.leaf_count, &challenge, &proof) {
            let error = DomainError::NotEntitled(format!(
                "proof of ownership failed ({e}): the caller does not hold this blob"
            ));
            self.audit_denial(caller, Rpc::PutRecord, owner, &new.record_id, &error)
                .await;
            return Err(error.into());
        }
        self.challenges.proved(owner, blob.blob_id);
        let store = self.store.clone();
        let meta = run(move || store.link_blob(new, blob, unix_now())).await?;
        tracing::info!(record = %meta.record_id, owner = %meta.owner_id, "record linked to a stored blob");
        let note = AuditNote {
            rpc: Rpc::PutRecord,
            owner_id: owner,
            partition: &meta.partition,
            record_id: &meta.record_id,
            outcome: "ok",
            detail: "linked to a stored blob by proof of ownership",
        };
        self.gate.audit(caller, note).await;
        Ok(meta)
    }

    /// The record and its content, for its owner or a grantee AccessPolicy
    /// allows to read it.
    pub async fn get_record(
        &self,
        caller: &Caller,
        record_id: &RecordId,
    ) -> Result<RecordRead, DomainError> {
        let meta = self.meta(record_id).await?;
        let is_owner = caller
            .as_patient()
            .is_some_and(|p| p.as_str() == meta.owner_id);
        if !is_owner {
            let subject = GateSubject {
                owner_id: &meta.owner_id,
                partition: &meta.partition,
                epoch: meta.epoch,
                record_created_at: Some(meta.created_at),
                record_id: &meta.record_id,
                action: GateAction::Read,
            };
            let verdict = self.gate.check(caller, subject).await?;
            if !verdict.allowed {
                return Err(DomainError::NotEntitled(format!(
                    "{caller} may not read record {}: {}",
                    meta.record_id, verdict.caller_reason
                )));
            }
        }
        let store = self.store.clone();
        let id = meta.record_id.clone();
        let chunks = run(move || Ok(store.chunks(&id))).await?;
        Ok(RecordRead { meta, chunks })
    }

    /// One page of a listing: all of the owner's records for the owner, the
    /// ones their grants' windows cover for anyone else.
    pub async fn list_records(
        &self,
        caller: &Caller,
        query: ListQuery,
    ) -> Result<Listing, DomainError> {
        let Some((_, caller_id)) = caller.as_user() else {
            return Err(DomainError::NotEntitled("only users list records".into()));
        };
        let owner = query
            .owner
            .unwrap_or_else(|| caller_id.clone())
            .into_string();
        let partition = query.partition.map(PartitionName::into_string);
        let page = match query.page_size as usize {
            0 => DEFAULT_LIST_LIMIT,
            n if n > MAX_LIST_LIMIT => {
                return Err(DomainError::Malformed(format!(
                    "page_size {n} exceeds {MAX_LIST_LIMIT}"
                )));
            }
            n => n,
        };
        let caller_name = self.caller_key(caller);
        let scope = TokenScope {
            caller: &caller_name,
            owner_id: &owner,
            partition: partition.as_deref(),
        };
        // Tokens are sealed: a position in an index names record ids and
        // partitions the caller may not be allowed to see.
        let from = if query.page_token.is_empty() {
            None
        } else {
            Some(self.page_tokens.open(&scope, &query.page_token)?)
        };
        let (records, next) = if caller.as_patient().is_some_and(|p| p.as_str() == owner) {
            let store = self.store.clone();
            let (o, p) = (owner.clone(), partition.clone());
            let after = from.map(|c| c.record_id);
            let (records, last) =
                run(move || store.list(&o, p.as_deref(), after.as_deref(), page)).await?;
            let next = last.map(|record_id| Cursor {
                partition: String::new(),
                record_id,
            });
            (records, next)
        } else {
            self.list_granted(caller, &owner, partition.clone(), from, page)
                .await?
        };
        Ok(Listing {
            records,
            next_page_token: next
                .map(|c| self.page_tokens.seal(&scope, &c))
                .unwrap_or_default(),
        })
    }

    /// What a non-owner may list of `owner`'s records: one LIST check per
    /// partition (the grant's window then filters its records), so no
    /// record, partition or token of a partition without a grant is ever
    /// touched for this caller.
    async fn list_granted(
        &self,
        caller: &Caller,
        owner: &str,
        partition: Option<String>,
        from: Option<Cursor>,
        page: usize,
    ) -> Result<(Vec<RecordMeta>, Option<Cursor>), DomainError> {
        let mut partitions = match partition {
            Some(p) => vec![p],
            None => {
                let store = self.store.clone();
                let o = owner.to_owned();
                let start = from
                    .as_ref()
                    .map(|c| c.partition.clone())
                    .unwrap_or_default();
                run(move || store.partitions(&o, &start, MAX_PARTITIONS_PER_LIST + 1)).await?
            }
        };
        // The first partition this call will not ask about, if any.
        let resume = (partitions.len() > MAX_PARTITIONS_PER_LIST)
            .then(|| partitions.pop())
            .flatten();
        let mut windows = Vec::new();
        for p in partitions {
            let subject = GateSubject {
                owner_id: owner,
                partition: &p,
                epoch: 0,
                record_created_at: None,
                record_id: "",
                action: GateAction::List,
            };
            let verdict = self.gate.check(caller, subject).await?;
            if let Some(window) = verdict.window.filter(|_| verdict.allowed) {
                windows.push((p, window));
            }
        }
        let store = self.store.clone();
        let o = owner.to_owned();
        let (records, next) =
            run(move || store.list_visible(&o, &windows, from.as_ref(), page)).await?;
        let next = next.or_else(|| {
            resume.map(|partition| Cursor {
                partition,
                record_id: String::new(),
            })
        });
        Ok((records, next))
    }

    /// Deletes one of the caller's own records. An attempt on someone
    /// else's is audited for its owner, so she sees it in her own view of
    /// the audit trail.
    pub async fn delete_record(
        &self,
        caller: &Caller,
        record_id: &RecordId,
    ) -> Result<RecordMeta, DomainError> {
        let owner = owner_of(caller)?;
        let store = self.store.clone();
        let (o, id) = (owner.to_string(), record_id.to_string());
        match run(move || store.delete(&o, &id)).await {
            Ok(meta) => {
                tracing::info!(record = %meta.record_id, owner = %meta.owner_id, "record deleted");
                Ok(meta)
            }
            Err(error @ DomainError::NotEntitled(_)) => {
                let owner = match self.meta(record_id).await {
                    Ok(m) => m.owner_id,
                    Err(_) => String::new(),
                };
                self.audit_denial(caller, Rpc::DeleteRecord, &owner, record_id, &error)
                    .await;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Whether the blob is stored where the caller's uploads may share it,
    /// and if so the ownership challenge to answer. Every probe is audited
    /// and charged to the caller's probe budget: under `global` scope the
    /// answer says whether anyone stored this file (docs/dedup.md).
    pub async fn query_blob(
        &self,
        caller: &Caller,
        blob_id: [u8; 32],
    ) -> Result<Option<BlobOffer>, DomainError> {
        let owner = owner_of(caller)?;
        if !self
            .blob_queries
            .check(&self.caller_key(caller), Instant::now())
        {
            return Err(DomainError::UsedUp(format!(
                "blob query rate limit reached for {caller}; retry shortly"
            )));
        }
        let store = self.store.clone();
        let o = owner.to_string();
        let info = run(move || store.blob(&o, &blob_id)).await?;
        let detail = format!(
            "blob {}: {}",
            hex::encode(&blob_id[..8]),
            if info.is_some() {
                "stored"
            } else {
                "not stored"
            }
        );
        let note = AuditNote {
            rpc: Rpc::QueryBlob,
            owner_id: owner,
            partition: "",
            record_id: "",
            outcome: "probe",
            detail: &detail,
        };
        self.gate.audit(caller, note).await;
        let Some(info) = info else {
            return Ok(None);
        };
        let challenge =
            self.challenges
                .issue(owner, blob_id, info.leaf_count, unix_now() as u64)?;
        Ok(Some(BlobOffer {
            challenge,
            blob_size: info.size,
        }))
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
