//! `sesphr.v1.CloudStorage` over `sesphr-cloud-storage`.
//!
//! CloudStorage is untrusted for confidentiality: it handles ciphertext only.
//! It is still the gatekeeper of *availability* of ciphertext: a non-owner
//! gets a record only after AccessPolicy allows it (which also enforces the
//! grant's `not_before`, i.e. backward access control).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use sesphr_cloud_storage::{NewRecord, RecordMeta, RecordStore};
use sesphr_identity::{Identity, validate_partition, validate_user_id};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::policy_client::{CheckSubject, PolicyClient};
use super::status::{IntoStatus, invalid};
use super::{blocking, unix_now};
use crate::auth::{self, Rpc};
use crate::proto::cloud_storage_server::CloudStorage;
use crate::proto::{self, CheckAction, get_record_response, put_record_request};

/// Largest ciphertext chunk in one `PutRecord` message.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;
/// Largest encoded record header.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Default and largest `ListRecords` page.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// Chunks read ahead of a slow downloader (bounds server memory per stream).
const DOWNLOAD_READ_AHEAD: usize = 4;

pub struct CloudStorageService {
    store: Arc<RecordStore>,
    policy: PolicyClient,
    trust_domain: String,
}

impl CloudStorageService {
    pub fn new(store: Arc<RecordStore>, policy: PolicyClient, trust_domain: String) -> Self {
        Self {
            store,
            policy,
            trust_domain,
        }
    }

    async fn authorize<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<Identity, Status> {
        match auth::authorize(req, rpc, &self.trust_domain) {
            Ok(id) => Ok(id),
            Err(status) => {
                if let Ok(Some(caller)) = auth::peer_identity(req, &self.trust_domain) {
                    self.audit_denial(&caller, rpc, "", "", &status).await;
                }
                Err(status)
            }
        }
    }

    async fn audit_denial(
        &self,
        caller: &Identity,
        rpc: Rpc,
        owner_id: &str,
        record_id: &str,
        status: &Status,
    ) {
        self.policy
            .record_event(proto::RecordEventRequest {
                action: format!("denied:{}", rpc.method()),
                owner_id: owner_id.to_owned(),
                partition: String::new(),
                subject: caller.short(),
                record_id: record_id.to_owned(),
                outcome: "denied".into(),
                detail: status.message().to_owned(),
            })
            .await;
    }

    async fn meta(&self, record_id: String) -> Result<RecordMeta, Status> {
        validate_user_id(&record_id).map_err(|_| {
            Status::invalid_argument(format!(
                "record_id {:?} is not a valid record id",
                truncate(&record_id)
            ))
        })?;
        let store = self.store.clone();
        let id = record_id.clone();
        blocking(move || store.get(&id))
            .await?
            .ok_or_else(|| Status::not_found(format!("no record {record_id}")))
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    }
}

/// Whether a grant (as returned by a LIST check) covers a stored record.
fn grant_covers(grant: &proto::AccessGrant, m: &RecordMeta) -> bool {
    m.epoch >= grant.epoch_min
        && grant.epoch_max.is_none_or(|max| m.epoch <= max)
        && m.created_at >= grant.not_before
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<proto::GetRecordResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CloudStorage for CloudStorageService {
    async fn put_record(
        &self,
        req: Request<Streaming<proto::PutRecordRequest>>,
    ) -> Result<Response<proto::PutRecordResponse>, Status> {
        let caller = self.authorize(&req, Rpc::PutRecord).await?;
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
        validate_user_id(&header.record_id).map_err(|_| {
            Status::invalid_argument(format!(
                "record_id {:?} is not a valid record id ([a-z0-9][a-z0-9._-]{{0,63}})",
                truncate(&header.record_id)
            ))
        })?;
        validate_partition(&header.partition).map_err(invalid)?;
        if header.record_header.is_empty() || header.record_header.len() > MAX_HEADER_BYTES {
            return Err(Status::invalid_argument(format!(
                "record_header must be 1 to {MAX_HEADER_BYTES} bytes"
            )));
        }
        crate::record::check_header_matches(
            &header.record_header,
            &owner,
            &header.record_id,
            &header.partition,
            header.epoch,
        )?;
        let new = NewRecord {
            record_id: header.record_id,
            owner_id: owner,
            partition: header.partition,
            epoch: header.epoch,
            header: header.record_header,
            declared_size: header.ciphertext_size,
        };
        let store = self.store.clone();
        let mut upload = blocking(move || store.begin_upload(new)).await?;
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
            if chunk.len() > MAX_CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "chunk of {} bytes exceeds {MAX_CHUNK_BYTES}",
                    chunk.len()
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
        let caller = self.authorize(&req, Rpc::GetRecord).await?;
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
                    decision.reason
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
        let caller = self.authorize(&req, Rpc::ListRecords).await?;
        let r = req.into_inner();
        let (_, caller_id) = caller.as_user().expect("authorize admits only users here");
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
        let after = if r.page_token.is_empty() {
            None
        } else {
            validate_user_id(&r.page_token).map_err(|_| {
                Status::invalid_argument("page_token is not one this server issued")
            })?;
            Some(r.page_token)
        };
        let is_owner = caller.as_patient() == Some(owner.as_str());
        let store = self.store.clone();
        let (o, p) = (owner.clone(), partition.clone());
        let (records, next) =
            blocking(move || store.list(&o, p.as_deref(), after.as_deref(), page)).await?;
        let records = if is_owner {
            records
        } else {
            // One LIST check per (partition, epoch) on this page; the
            // returned grant window filters the individual records.
            let mut grants: std::collections::HashMap<(String, u32), Option<proto::AccessGrant>> =
                Default::default();
            let mut visible = Vec::new();
            for m in records {
                let key = (m.partition.clone(), m.epoch);
                if !grants.contains_key(&key) {
                    let d = self
                        .policy
                        .check(
                            &caller,
                            CheckSubject {
                                owner_id: &owner,
                                partition: &m.partition,
                                epoch: m.epoch,
                                record_created_at: None,
                                record_id: "",
                                action: CheckAction::List,
                            },
                        )
                        .await?;
                    grants.insert(key.clone(), d.grant.filter(|_| d.allowed));
                }
                if let Some(Some(g)) = grants.get(&key)
                    && grant_covers(g, &m)
                {
                    visible.push(m);
                }
            }
            visible
        };
        Ok(Response::new(proto::ListRecordsResponse {
            records: records.into_iter().map(meta_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_record(
        &self,
        req: Request<proto::DeleteRecordRequest>,
    ) -> Result<Response<proto::DeleteRecordResponse>, Status> {
        let caller = self.authorize(&req, Rpc::DeleteRecord).await?;
        let owner = caller.as_patient().unwrap_or_default().to_owned();
        let record_id = req.into_inner().record_id;
        validate_user_id(&record_id).map_err(|_| {
            Status::invalid_argument(format!(
                "record_id {:?} is not a valid record id",
                truncate(&record_id)
            ))
        })?;
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
                    self.audit_denial(&caller, Rpc::DeleteRecord, "", &record_id, &status)
                        .await;
                }
                Err(status)
            }
        }
    }
}
