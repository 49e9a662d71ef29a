//! How a re-encryption node or AccessPolicy learns an enrolled user's
//! registered keys and role.
//!
//! The user directory has one home, the setup service, which is its only
//! writer: nobody keeps a copy of their own that could disagree. A node
//! asks the setup service (`Srs/GetUser`, over mTLS as itself) when an owner
//! files a kfrag and when it re-encrypts, AccessPolicy when a patient
//! grants (grants go to enrolled users only, under their enrolled role),
//! and each remembers what it was told:
//! an enrolled id is taken for good and its keys never change, so a found
//! entry stays true. Not-found is never remembered (the user may enrol a
//! moment later).
//!
//! Failure modes (docs/design.md, "Setup and re-encryption nodes"): with
//! the setup service unreachable a node refuses new kfrags (`UNAVAILABLE`:
//! it cannot check whose signature they carry) and serves reads only for
//! owners and grantees it already knows. A setup service that lies about an
//! owner's verifying key can make a node accept kfrags the owner never
//! signed, but the grantee checks every cfrag against the owner's key it
//! pinned itself, so the lie yields refused cfrags, not a wrong record.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use sesphr::proto::GetUserRequest;
use sesphr::proto::srs_client::SrsClient;
use sesphr_domain::DomainError;
use sesphr_identity::{Role, UserId};
use tonic::Code;
use tonic::transport::Channel;

/// Entries a node remembers at most; when full it starts over.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// What a node needs to know of an enrolled user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub role: Role,
    /// The key others re-encrypt to.
    pub pre_public_key: Vec<u8>,
    /// The key that verifies the user's kfrag signatures.
    pub verifying_key: Vec<u8>,
}

/// The user directory as a node sees it.
pub trait Directory: Send + Sync + 'static {
    /// The user enrolled as `user_id`: `Unknown` if nobody is, `Unavailable`
    /// if the directory could not be asked.
    fn user(
        &self,
        user_id: &UserId,
    ) -> impl Future<Output = Result<DirectoryEntry, DomainError>> + Send;
}

/// The setup service over the mesh, with found entries remembered.
pub struct SetupDirectory {
    client: SrsClient<Channel>,
    timeout: Duration,
    capacity: usize,
    known: Mutex<HashMap<UserId, DirectoryEntry>>,
}

impl SetupDirectory {
    /// `channel` must already pin the setup service's identity
    /// (`sesphr_mesh::tls::channel`); every call is bounded by `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        SetupDirectory {
            client: SrsClient::new(channel),
            timeout,
            capacity: DEFAULT_CAPACITY,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, user_id: &UserId) -> Option<DirectoryEntry> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(user_id).cloned()
    }

    fn remember(&self, user_id: &UserId, entry: &DirectoryEntry) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= self.capacity {
            known.clear();
        }
        known.insert(user_id.clone(), entry.clone());
    }
}

impl Directory for SetupDirectory {
    async fn user(&self, user_id: &UserId) -> Result<DirectoryEntry, DomainError> {
        if let Some(hit) = self.remembered(user_id) {
            return Ok(hit);
        }
        let mut req = tonic::Request::new(GetUserRequest {
            user_id: user_id.to_string(),
        });
        req.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(self.timeout, client.get_user(req)).await;
        let info = match answer {
            Ok(Ok(info)) => info.into_inner(),
            Ok(Err(status)) if status.code() == Code::NotFound => {
                return Err(DomainError::Unknown(format!("no enrolled user {user_id}")));
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "setup service refused a directory lookup");
                return Err(DomainError::Unavailable(
                    "the user directory (setup service) could not be asked; retry".into(),
                ));
            }
            Err(_) => {
                return Err(DomainError::Unavailable(
                    "the user directory (setup service) did not answer in time; retry".into(),
                ));
            }
        };
        // An answer about someone else, or without a known role, is the
        // setup service's fault, not a fact about the user.
        let role = sesphr::proto::Role::try_from(info.role)
            .ok()
            .and_then(sesphr::proto::Role::to_domain);
        let (Some(role), true) = (role, info.user_id == user_id.as_str()) else {
            return Err(DomainError::Unavailable(
                "the user directory (setup service) gave an unusable answer".into(),
            ));
        };
        let entry = DirectoryEntry {
            role,
            pre_public_key: info.pre_public_key,
            verifying_key: info.verifying_key,
        };
        self.remember(user_id, &entry);
        Ok(entry)
    }
}
