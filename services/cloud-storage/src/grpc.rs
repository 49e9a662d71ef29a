//! `sesphr.v1.CloudStorage` over `sesphr-cloud-storage`.
//!
//! CloudStorage is untrusted for confidentiality: it handles ciphertext only.
//! It is still the gatekeeper of *availability* of ciphertext: a non-owner
//! gets a record only after AccessPolicy allows it (which also enforces the
//! grant's `not_before`, i.e. backward access control).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::{
    BlobRef, ChallengeBook, ChallengePolicy, Cursor, DEFAULT_LIST_LIMIT as DEFAULT_PAGE,
    MAX_LIST_LIMIT as MAX_PAGE, NewRecord, PageTokens, RecordMeta, RecordStore, TokenScope, Window,
};
use futures::{Stream, StreamExt};
use sesphr_dedup::pow::Proof;
use sesphr_identity::{Identity, validate_partition, validate_record_id, validate_user_id};
use sesphr_mesh::RateLimiter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use sesphr::proto::cloud_storage_server::CloudStorage;
use sesphr::proto::{self, CheckAction, get_record_response, put_record_request};
use sesphr::rpc::Rpc;
use sesphr_mesh::auth;
use sesphr_mesh::policy_client::{AuditAbout, CheckSubject, PolicyClient};
use sesphr_mesh::status::{IntoStatus, invalid};
use sesphr_mesh::{blocking, unix_now};

/// Chunks read ahead of a slow downloader (bounds server memory per stream).
const DOWNLOAD_READ_AHEAD: usize = 4;
/// Partitions one non-owner `ListRecords` call asks AccessPolicy about; a
/// listing of an owner with more continues through the page token.
const MAX_PARTITIONS_PER_LIST: usize = 64;
/// `QueryBlob` calls per second per identity (burst: 4x). Each one is an
/// audited existence probe of somebody's file (under `global` scope).
pub const DEFAULT_BLOB_QUERY_RATE: f64 = 50.0;

pub struct CloudStorageService {
    store: Arc<RecordStore>,
    policy: PolicyClient,
    trust_domain: String,
    /// Open proof-of-ownership challenges and how often each was drawn.
    challenges: ChallengeBook,
    page_tokens: PageTokens,
    blob_queries: RateLimiter,
}

impl CloudStorageService {
    pub fn new(
        store: Arc<RecordStore>,
        policy: PolicyClient,
        trust_domain: String,
    ) -> Result<Self, crate::DomainError> {
        let page_tokens = PageTokens::new(&*store.secret("list-page-tokens")?);
        Ok(Self {
            store,
            policy,
            trust_domain,
            challenges: ChallengeBook::new(ChallengePolicy::default()),
            page_tokens,
            blob_queries: RateLimiter::new(
                DEFAULT_BLOB_QUERY_RATE,
                (DEFAULT_BLOB_QUERY_RATE * 4.0) as u32,
            ),
        })
    }

    /// The caller the authorization layer admitted, as its identity in this
    /// mesh (every RPC but `Enroll` requires a certificate).
    fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        auth::caller(req)?
            .identity(&self.trust_domain)
            .ok_or_else(|| {
                Status::unauthenticated("a client certificate from the mesh CA is required")
            })
    }

    async fn audit_denial(
        &self,
        caller: &Identity,
        rpc: Rpc,
        owner_id: &str,
        record_id: &str,
        status: &Status,
    ) {
        let about = AuditAbout {
            owner_id,
            record_id,
            ..Default::default()
        };
        self.policy
            .audit(caller, rpc, about, "denied", status.message())
            .await;
    }

    async fn meta(&self, record_id: String) -> Result<RecordMeta, Status> {
        check_record_id(&record_id)?;
        let store = self.store.clone();
        let id = record_id.clone();
        blocking(move || store.get(&id))
            .await?
            .ok_or_else(|| Status::not_found(format!("no record {record_id}")))
    }
}

impl CloudStorageService {
    /// Links a new record to a stored blob once the caller answered its
    /// ownership challenge; no ciphertext travels.
    async fn link_by_proof(
        &self,
        caller: &Identity,
        owner: &str,
        new: NewRecord,
        blob: BlobRef,
        proof: &[u8],
        mut stream: Streaming<proto::PutRecordRequest>,
    ) -> Result<Response<proto::PutRecordResponse>, Status> {
        if stream.message().await?.is_some() {
            return Err(Status::invalid_argument(
                "no chunks may follow an ownership proof: the blob is already stored",
            ));
        }
        let challenge = self
            .challenges
            .take(owner, blob.blob_id, unix_now() as u64)
            .map_err(IntoStatus::into_status)?;
        let proof = Proof::from_bytes(proof).map_err(|e| {
            Status::invalid_argument(format!("ownership_proof does not parse: {e}"))
        })?;
        let store = self.store.clone();
        let (o, id) = (owner.to_owned(), blob.blob_id);
        let info = blocking(move || store.blob(&o, &id))
            .await?
            .ok_or_else(|| Status::not_found("the blob is no longer stored; upload it"))?;
        if let Err(e) = sesphr_dedup::verify(&info.root, info.leaf_count, &challenge, &proof) {
            let status = Status::permission_denied(format!(
                "proof of ownership failed ({e}): the caller does not hold this blob"
            ));
            self.audit_denial(caller, Rpc::PutRecord, owner, &new.record_id, &status)
                .await;
            return Err(status);
        }
        self.challenges.proved(owner, blob.blob_id);
        let store = self.store.clone();
        let meta = blocking(move || store.link_blob(new, blob, unix_now())).await?;
        tracing::info!(record = %meta.record_id, owner = %meta.owner_id, "record linked to a stored blob");
        let about = AuditAbout {
            owner_id: owner,
            partition: &meta.partition,
            record_id: &meta.record_id,
        };
        self.policy
            .audit(
                caller,
                Rpc::PutRecord,
                about,
                "ok",
                "linked to a stored blob by proof of ownership",
            )
            .await;
        Ok(Response::new(proto::PutRecordResponse {
            record: Some(meta_to_proto(meta)),
        }))
    }
}

impl CloudStorageService {
    /// What a non-owner may list of `owner`'s records: one LIST check per
    /// partition (the grant's window then filters its records), so no
    /// record, partition or token of a partition without a grant is ever
    /// touched for this caller.
    async fn list_granted(
        &self,
        caller: &Identity,
        owner: &str,
        partition: Option<String>,
        from: Option<Cursor>,
        page: usize,
    ) -> Result<(Vec<RecordMeta>, Option<Cursor>), Status> {
        let mut partitions = match partition {
            Some(p) => vec![p],
            None => {
                let store = self.store.clone();
                let o = owner.to_owned();
                let start = from
                    .as_ref()
                    .map(|c| c.partition.clone())
                    .unwrap_or_default();
                blocking(move || store.partitions(&o, &start, MAX_PARTITIONS_PER_LIST + 1)).await?
            }
        };
        // The first partition this call will not ask about, if any.
        let resume = (partitions.len() > MAX_PARTITIONS_PER_LIST)
            .then(|| partitions.pop())
            .flatten();
        let mut windows = Vec::new();
        for p in partitions {
            let d = self
                .policy
                .check(
                    caller,
                    CheckSubject {
                        owner_id: owner,
                        partition: &p,
                        epoch: 0,
                        record_created_at: None,
                        record_id: "",
                        action: CheckAction::List,
                    },
                )
                .await?;
            if let Some(g) = d.grant.filter(|_| d.allowed) {
                let window = Window {
                    epoch_min: g.epoch_min,
                    epoch_max: g.epoch_max,
                    not_before: g.not_before,
                };
                windows.push((p, window));
            }
        }
        let store = self.store.clone();
        let o = owner.to_owned();
        let (records, next) =
            blocking(move || store.list_visible(&o, &windows, from.as_ref(), page)).await?;
        let next = next.or_else(|| {
            resume.map(|partition| Cursor {
                partition,
                record_id: String::new(),
            })
        });
        Ok((records, next))
    }
}

fn check_record_id(record_id: &str) -> Result<(), Status> {
    validate_record_id(record_id).map_err(invalid)
}

fn meta_to_proto(m: RecordMeta) -> proto::RecordMeta {
    proto::RecordMeta {
        record_id: m.record_id,
        owner_id: m.owner_id,
        partition: m.partition,
        epoch: m.epoch,
        created_at: m.created_at,
        ciphertext_size: m.size,
        record_header: m.header,
        blob_id: m
            .blob
            .as_ref()
            .map(|b| b.blob_id.to_vec())
            .unwrap_or_default(),
        wrapped_content_key: m.blob.map(|b| b.wrapped_key).unwrap_or_default(),
    }
}

fn blob_id_from(bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!("blob_id must be 32 bytes, not {}", bytes.len()))
    })
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<proto::GetRecordResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CloudStorage for CloudStorageService {
    async fn put_record(
        &self,
        req: Request<Streaming<proto::PutRecordRequest>>,
    ) -> Result<Response<proto::PutRecordResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner = caller.as_patient().unwrap_or_default().to_owned();
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(proto::PutRecordRequest {
                part: Some(put_record_request::Part::Header(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first PutRecord message must be the header",
                ));
            }
            None => return Err(Status::invalid_argument("empty PutRecord stream")),
        };
        check_record_id(&header.record_id)?;
        validate_partition(&header.partition).map_err(invalid)?;
        let limits = self.store.limits();
        if header.record_header.is_empty() || header.record_header.len() > limits.max_header_size {
            return Err(Status::invalid_argument(format!(
                "record_header must be 1 to {} bytes",
                limits.max_header_size
            )));
        }
        let deduplicated = !header.blob_id.is_empty();
        crate::header_check::check_header_matches(
            &header.record_header,
            &owner,
            &header.record_id,
            &header.partition,
            header.epoch,
            deduplicated,
        )?;
        let stray = !header.wrapped_content_key.is_empty() || !header.ownership_proof.is_empty();
        if !deduplicated && stray {
            return Err(Status::invalid_argument(
                "wrapped_content_key and ownership_proof belong to deduplicated records (set blob_id)",
            ));
        }
        let blob = if deduplicated {
            if header.wrapped_content_key.len() != sesphr_dedup::convergent::WRAPPED_KEY_LEN {
                return Err(Status::invalid_argument(format!(
                    "wrapped_content_key must be {} bytes",
                    sesphr_dedup::convergent::WRAPPED_KEY_LEN
                )));
            }
            Some(BlobRef {
                blob_id: blob_id_from(&header.blob_id)?,
                wrapped_key: header.wrapped_content_key,
            })
        } else {
            None
        };
        let proof = header.ownership_proof;
        let new = NewRecord {
            record_id: header.record_id,
            owner_id: owner.clone(),
            partition: header.partition,
            epoch: header.epoch,
            header: header.record_header,
            declared_size: header.ciphertext_size,
        };
        if let Some(blob) = blob.clone().filter(|_| !proof.is_empty()) {
            return self
                .link_by_proof(&caller, &owner, new, blob, &proof, stream)
                .await;
        }
        let store = self.store.clone();
        let mut upload = match blob {
            Some(blob) => blocking(move || store.begin_blob_upload(new, blob)).await?,
            None => blocking(move || store.begin_upload(new)).await?,
        };
        // Chunks go to the store as they arrive; nothing is visible until
        // commit, and dropping `upload` on any error removes what was staged.
        while let Some(msg) = stream.message().await? {
            let chunk = match msg.part {
                Some(put_record_request::Part::Chunk(c)) => c,
                Some(put_record_request::Part::Header(_)) => {
                    return Err(Status::invalid_argument(
                        "only the first PutRecord message may be a header",
                    ));
                }
                None => return Err(Status::invalid_argument("empty PutRecord message")),
            };
            if chunk.len() > limits.max_chunk_size {
                return Err(Status::invalid_argument(format!(
                    "chunk of {} bytes exceeds {}",
                    chunk.len(),
                    limits.max_chunk_size
                )));
            }
            upload = blocking(move || upload.append(&chunk).map(|()| upload)).await?;
        }
        let meta = blocking(move || upload.commit(unix_now())).await?;
        tracing::info!(record = %meta.record_id, owner = %meta.owner_id, partition = %meta.partition, bytes = meta.size, "record stored");
        Ok(Response::new(proto::PutRecordResponse {
            record: Some(meta_to_proto(meta)),
        }))
    }

    type GetRecordStream = ByteStream;

    async fn get_record(
        &self,
        req: Request<proto::GetRecordRequest>,
    ) -> Result<Response<Self::GetRecordStream>, Status> {
        let caller = self.caller(&req)?;
        let meta = self.meta(req.into_inner().record_id).await?;
        let is_owner = caller.as_patient() == Some(meta.owner_id.as_str());
        if !is_owner {
            let decision = self
                .policy
                .check(
                    &caller,
                    CheckSubject {
                        owner_id: &meta.owner_id,
                        partition: &meta.partition,
                        epoch: meta.epoch,
                        record_created_at: Some(meta.created_at),
                        record_id: &meta.record_id,
                        action: CheckAction::Read,
                    },
                )
                .await?;
            if !decision.allowed {
                return Err(Status::permission_denied(format!(
                    "{} may not read record {}: {}",
                    caller.short(),
                    meta.record_id,
                    decision.caller_reason
                )));
            }
        }
        let (tx, rx) = mpsc::channel(DOWNLOAD_READ_AHEAD);
        let chunks = self.store.chunks(&meta.record_id);
        let first = proto::GetRecordResponse {
            part: Some(get_record_response::Part::Meta(meta_to_proto(meta))),
        };
        // Read chunks on the blocking pool; the bounded channel keeps at most
        // a few chunks in memory however slow the client is.
        tokio::task::spawn_blocking(move || {
            if tx.blocking_send(Ok(first)).is_err() {
                return;
            }
            for chunk in chunks {
                let msg =
                    chunk
                        .map_err(IntoStatus::into_status)
                        .map(|c| proto::GetRecordResponse {
                            part: Some(get_record_response::Part::Chunk(bytes::Bytes::from(
                                c.to_vec(),
                            ))),
                        });
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn list_records(
        &self,
        req: Request<proto::ListRecordsRequest>,
    ) -> Result<Response<proto::ListRecordsResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let Some((_, caller_id)) = caller.as_user() else {
            return Err(Status::permission_denied("only users list records"));
        };
        let owner = if r.owner_id.is_empty() {
            caller_id.to_owned()
        } else {
            validate_user_id(&r.owner_id).map_err(invalid)?;
            r.owner_id
        };
        let partition = if r.partition.is_empty() {
            None
        } else {
            validate_partition(&r.partition).map_err(invalid)?;
            Some(r.partition)
        };
        let page = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} exceeds {MAX_PAGE}"
                )));
            }
            n => n,
        };
        let caller_name = caller.to_string();
        let scope = TokenScope {
            caller: &caller_name,
            owner_id: &owner,
            partition: partition.as_deref(),
        };
        // Tokens are sealed: a position in an index names record ids and
        // partitions the caller may not be allowed to see.
        let from = if r.page_token.is_empty() {
            None
        } else {
            Some(
                self.page_tokens
                    .open(&scope, &r.page_token)
                    .map_err(IntoStatus::into_status)?,
            )
        };
        let (records, next) = if caller.as_patient() == Some(owner.as_str()) {
            let store = self.store.clone();
            let (o, p) = (owner.clone(), partition.clone());
            let after = from.map(|c| c.record_id);
            let (records, last) =
                blocking(move || store.list(&o, p.as_deref(), after.as_deref(), page)).await?;
            let next = last.map(|record_id| Cursor {
                partition: String::new(),
                record_id,
            });
            (records, next)
        } else {
            self.list_granted(&caller, &owner, partition.clone(), from, page)
                .await?
        };
        Ok(Response::new(proto::ListRecordsResponse {
            records: records.into_iter().map(meta_to_proto).collect(),
            next_page_token: next
                .map(|c| self.page_tokens.seal(&scope, &c))
                .unwrap_or_default(),
        }))
    }

    async fn delete_record(
        &self,
        req: Request<proto::DeleteRecordRequest>,
    ) -> Result<Response<proto::DeleteRecordResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner = caller.as_patient().unwrap_or_default().to_owned();
        let record_id = req.into_inner().record_id;
        check_record_id(&record_id)?;
        let store = self.store.clone();
        let (o, id) = (owner.clone(), record_id.clone());
        match blocking(move || store.delete(&o, &id)).await {
            Ok(meta) => {
                tracing::info!(record = %meta.record_id, owner = %meta.owner_id, "record deleted");
                Ok(Response::new(proto::DeleteRecordResponse {
                    record: Some(meta_to_proto(meta)),
                }))
            }
            Err(status) => {
                if status.code() == tonic::Code::PermissionDenied {
                    // Attributed to the record's owner, so she sees the
                    // attempt in her own view of the audit trail.
                    let owner = match self.meta(record_id.clone()).await {
                        Ok(m) => m.owner_id,
                        Err(_) => String::new(),
                    };
                    self.audit_denial(&caller, Rpc::DeleteRecord, &owner, &record_id, &status)
                        .await;
                }
                Err(status)
            }
        }
    }

    async fn query_blob(
        &self,
        req: Request<proto::QueryBlobRequest>,
    ) -> Result<Response<proto::QueryBlobResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner = caller.as_patient().unwrap_or_default().to_owned();
        let blob_id = blob_id_from(&req.into_inner().blob_id)?;
        if !self.blob_queries.check(&caller.to_string(), Instant::now()) {
            return Err(Status::resource_exhausted(format!(
                "blob query rate limit reached for {}; retry shortly",
                caller.short()
            )));
        }
        let store = self.store.clone();
        let o = owner.clone();
        let info = blocking(move || store.blob(&o, &blob_id)).await?;
        // Every probe is audited under the caller: under `global` scope the
        // answer says whether anyone stored this file (docs/dedup.md).
        let about = AuditAbout {
            owner_id: &owner,
            ..Default::default()
        };
        let probe = |hit: bool| {
            format!(
                "blob {}: {}",
                hex::encode(&blob_id[..8]),
                if hit { "stored" } else { "not stored" }
            )
        };
        let Some(info) = info else {
            self.policy
                .audit(&caller, Rpc::QueryBlob, about, "probe", &probe(false))
                .await;
            return Ok(Response::new(proto::QueryBlobResponse::default()));
        };
        self.policy
            .audit(&caller, Rpc::QueryBlob, about, "probe", &probe(true))
            .await;
        let challenge = self
            .challenges
            .issue(&owner, blob_id, info.leaf_count, unix_now() as u64)
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::QueryBlobResponse {
            exists: true,
            challenge: challenge.to_bytes(),
            blob_size: info.size,
        }))
    }
}
