//! `sesphr.v1.CloudStorage` over [`crate::service::CloudStorage`].
//!
//! Each handler takes the typed caller, decodes the request into domain
//! types (ids parsed here, once), calls the domain and maps the answer back.
//! The rules themselves live in [`crate::service`]; AccessPolicy is reached
//! through [`PolicyGate`], the domain's [`AccessGate`] over gRPC.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use sesphr_identity::{Caller, PartitionName, RecordId, UserId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use sesphr::proto::cloud_storage_server::CloudStorage as CloudStorageRpc;
use sesphr::proto::{self, CheckAction, get_record_response, put_record_request};
use sesphr_mesh::auth;
use sesphr_mesh::policy_client::{AuditAbout, CheckSubject, PolicyClient};
use sesphr_mesh::status::{IntoStatus, invalid};

pub use crate::service::DEFAULT_BLOB_QUERY_RATE;
use crate::service::{
    AccessGate, AuditNote, CloudStorage, Dedup, GateAction, GateSubject, ListQuery, PutError,
    PutHeader, Settings, Verdict,
};
use crate::{BlobRef, DomainError, RecordBackend, RecordMeta, Window};

/// Chunks read ahead of a slow downloader (bounds server memory per stream).
const DOWNLOAD_READ_AHEAD: usize = 4;

/// AccessPolicy, asked over the mesh, as CloudStorage's [`AccessGate`].
pub struct PolicyGate {
    policy: PolicyClient,
    trust_domain: String,
}

impl PolicyGate {
    pub fn new(policy: PolicyClient, trust_domain: String) -> Self {
        Self {
            policy,
            trust_domain,
        }
    }
}

impl AccessGate for PolicyGate {
    async fn check(
        &self,
        grantee: &Caller,
        subject: GateSubject<'_>,
    ) -> Result<Verdict, DomainError> {
        let action = match subject.action {
            GateAction::Read => CheckAction::Read,
            GateAction::List => CheckAction::List,
        };
        let d = self
            .policy
            .check_caller(
                grantee,
                &self.trust_domain,
                CheckSubject {
                    owner_id: subject.owner_id,
                    partition: subject.partition,
                    epoch: subject.epoch,
                    record_created_at: subject.record_created_at,
                    record_id: subject.record_id,
                    action,
                },
            )
            .await?;
        Ok(Verdict {
            allowed: d.allowed,
            caller_reason: d.caller_reason,
            window: d.grant.map(|g| Window {
                epoch_min: g.epoch_min,
                epoch_max: g.epoch_max,
                not_before: g.not_before,
            }),
        })
    }

    async fn audit(&self, caller: &Caller, note: AuditNote<'_>) {
        let about = AuditAbout {
            owner_id: note.owner_id,
            partition: note.partition,
            record_id: note.record_id,
        };
        // The caller's short name is what `PolicyClient::audit` records.
        self.policy
            .audit_subject(
                caller.to_string(),
                note.rpc,
                about,
                note.outcome,
                note.detail,
            )
            .await;
    }
}

pub struct CloudStorageService {
    domain: CloudStorage<PolicyGate>,
}

impl CloudStorageService {
    /// `store` is any [`RecordBackend`]: sled and files in the data
    /// directory, or PostgreSQL and an S3 bucket shared by replicas.
    pub fn new(
        store: Arc<dyn RecordBackend>,
        policy: PolicyClient,
        trust_domain: String,
    ) -> Result<Self, DomainError> {
        let gate = PolicyGate::new(policy, trust_domain.clone());
        let domain = CloudStorage::new(store, gate, trust_domain, Settings::default())?;
        Ok(Self { domain })
    }
}

fn record_id(text: String) -> Result<RecordId, Status> {
    RecordId::parse(text).map_err(invalid)
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

/// The deduplication fields of an upload header, if it names a blob.
fn dedup_from(header: &mut proto::RecordUpload) -> Result<Option<Dedup>, Status> {
    let deduplicated = !header.blob_id.is_empty();
    if !deduplicated {
        if !header.wrapped_content_key.is_empty() || !header.ownership_proof.is_empty() {
            return Err(Status::invalid_argument(
                "wrapped_content_key and ownership_proof belong to deduplicated records (set blob_id)",
            ));
        }
        return Ok(None);
    }
    if header.wrapped_content_key.len() != sesphr_dedup::convergent::WRAPPED_KEY_LEN {
        return Err(Status::invalid_argument(format!(
            "wrapped_content_key must be {} bytes",
            sesphr_dedup::convergent::WRAPPED_KEY_LEN
        )));
    }
    let proof = std::mem::take(&mut header.ownership_proof);
    Ok(Some(Dedup {
        blob: BlobRef {
            blob_id: blob_id_from(&header.blob_id)?,
            wrapped_key: std::mem::take(&mut header.wrapped_content_key),
        },
        ownership_proof: (!proof.is_empty()).then_some(proof),
    }))
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<proto::GetRecordResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CloudStorageRpc for CloudStorageService {
    async fn put_record(
        &self,
        req: Request<Streaming<proto::PutRecordRequest>>,
    ) -> Result<Response<proto::PutRecordResponse>, Status> {
        let caller = auth::caller(&req)?;
        let mut stream = req.into_inner();
        let mut header = match stream.message().await? {
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
        let record_id = record_id(std::mem::take(&mut header.record_id))?;
        let partition =
            PartitionName::parse(std::mem::take(&mut header.partition)).map_err(invalid)?;
        let dedup = dedup_from(&mut header)?;
        let put = PutHeader {
            record_id,
            partition,
            epoch: header.epoch,
            record_header: header.record_header,
            ciphertext_size: header.ciphertext_size,
            dedup,
        };
        let chunks = stream.map(|msg| match msg?.part {
            Some(put_record_request::Part::Chunk(c)) => Ok(c),
            Some(put_record_request::Part::Header(_)) => Err(Status::invalid_argument(
                "only the first PutRecord message may be a header",
            )),
            None => Err(Status::invalid_argument("empty PutRecord message")),
        });
        let meta = self
            .domain
            .put_record(&caller, put, chunks)
            .await
            .map_err(|e| match e {
                PutError::Refused(e) => e.into_status(),
                PutError::Stream(status) => status,
            })?;
        Ok(Response::new(proto::PutRecordResponse {
            record: Some(meta_to_proto(meta)),
        }))
    }

    type GetRecordStream = ByteStream;

    async fn get_record(
        &self,
        req: Request<proto::GetRecordRequest>,
    ) -> Result<Response<Self::GetRecordStream>, Status> {
        let caller = auth::caller(&req)?;
        let id = record_id(req.into_inner().record_id)?;
        let read = self
            .domain
            .get_record(&caller, &id)
            .await
            .map_err(IntoStatus::into_status)?;
        let (tx, rx) = mpsc::channel(DOWNLOAD_READ_AHEAD);
        let chunks = read.chunks;
        let first = proto::GetRecordResponse {
            part: Some(get_record_response::Part::Meta(meta_to_proto(read.meta))),
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
                            part: Some(get_record_response::Part::Chunk(bytes::Bytes::from(c))),
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
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let owner = if r.owner_id.is_empty() {
            None
        } else {
            Some(UserId::parse(r.owner_id).map_err(invalid)?)
        };
        let partition = if r.partition.is_empty() {
            None
        } else {
            Some(PartitionName::parse(r.partition).map_err(invalid)?)
        };
        let query = ListQuery {
            owner,
            partition,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let listing = self
            .domain
            .list_records(&caller, query)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::ListRecordsResponse {
            records: listing.records.into_iter().map(meta_to_proto).collect(),
            next_page_token: listing.next_page_token,
        }))
    }

    async fn delete_record(
        &self,
        req: Request<proto::DeleteRecordRequest>,
    ) -> Result<Response<proto::DeleteRecordResponse>, Status> {
        let caller = auth::caller(&req)?;
        let id = record_id(req.into_inner().record_id)?;
        let meta = self
            .domain
            .delete_record(&caller, &id)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::DeleteRecordResponse {
            record: Some(meta_to_proto(meta)),
        }))
    }

    async fn query_blob(
        &self,
        req: Request<proto::QueryBlobRequest>,
    ) -> Result<Response<proto::QueryBlobResponse>, Status> {
        let caller = auth::caller(&req)?;
        let blob_id = blob_id_from(&req.into_inner().blob_id)?;
        let offer = self
            .domain
            .query_blob(&caller, blob_id)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(match offer {
            None => proto::QueryBlobResponse::default(),
            Some(offer) => proto::QueryBlobResponse {
                exists: true,
                challenge: offer.challenge.to_bytes(),
                blob_size: offer.blob_size,
            },
        }))
    }
}
