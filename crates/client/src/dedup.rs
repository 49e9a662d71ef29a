//! Deduplicated uploads and downloads (message-locked encryption with
//! server-aided keys and proofs of ownership; see `crates/dedup/README.md`).
//!
//! Upload, in three passes over the input so memory stays at one segment:
//! 1. hash the plaintext; ask the SRS to evaluate the OPRF on the blinded
//!    hash; derive the content key;
//! 2. seal the blob deterministically and hash it: the blob id;
//! 3. ask CloudStorage whether the blob is stored: if so, answer its
//!    ownership challenge from the re-sealed blob and link the record (a few
//!    hundred KiB travel); otherwise stream the sealed blob.
//!
//! The record's own capsule (under the partition key) wraps the content
//! key, so sharing, revocation and partitions work as for any record.

use std::io::{Read, Seek, SeekFrom};

use sesphr_crypto::record::DemKeySource;
use sesphr_crypto::{self as crypto, KemKey, RecordHeader};
use sesphr_dedup::convergent::BLOB_HEADER_LEN;
use sesphr_dedup::pow::{Challenge, ProofBuilder};
use sesphr_dedup::{BlobOpener, BlobSealer, ContentKey, Sha256Hasher};

use super::{ClientError, Patient, Progress, Record, check_partition, rpc, unary};
use crate::parallel;
use crate::types::record_of;
use crate::upload::{self, read_err};
use sesphr::proto;

/// Whether an upload stored new bytes or linked to an equal stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No equal blob was stored: the sealed blob was uploaded.
    New,
    /// An equal blob was stored: the record links to it.
    Deduplicated,
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stored::New => "new",
            Stored::Deduplicated => "deduplicated",
        })
    }
}

const SEGMENT: u64 = sesphr_dedup::convergent::DEFAULT_BLOB_SEGMENT_SIZE as u64;
const TAG: u64 = sesphr_dedup::convergent::TAG_LEN as u64;

/// Size of the blob of a `len`-byte plaintext.
pub fn blob_len(len: u64) -> u64 {
    let segments = len.div_ceil(SEGMENT).max(1);
    sesphr_dedup::convergent::BLOB_HEADER_LEN as u64 + len + segments * TAG
}

/// What a record's owner signature binds besides its header (see
/// `sesphr_crypto::record`): nothing for a record stored on its own; for a
/// deduplicated one, the blob it points to and the wrapped content key, so
/// that neither the cloud nor anyone else can point the owner's header at
/// another blob or key.
pub(crate) fn header_binding(meta: &proto::RecordMeta) -> Vec<u8> {
    binding(&meta.blob_id, &meta.wrapped_content_key)
}

fn binding(blob_id: &[u8], wrapped_content_key: &[u8]) -> Vec<u8> {
    if blob_id.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(2 + blob_id.len() + wrapped_content_key.len());
    out.extend_from_slice(&(blob_id.len() as u16).to_be_bytes());
    out.extend_from_slice(blob_id);
    out.extend_from_slice(wrapped_content_key);
    out
}

pub(crate) fn dedup_err(e: sesphr_dedup::Error) -> ClientError {
    ClientError::Invalid(format!("deduplication: {e}"))
}

/// Pass 1: SHA-256 of the plaintext, exactly `len` bytes of it: the content
/// key must come from the bytes the later passes seal, so an input of
/// another length than declared is refused here, before anything is sent.
fn digest<R: Read + Seek>(
    input: &mut R,
    len: u64,
    progress: &Progress,
) -> Result<[u8; 32], ClientError> {
    input.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut within = input.by_ref().take(len);
    loop {
        let n = within.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress(done / 3);
    }
    if done < len {
        return Err(ClientError::Invalid(format!(
            "input has {done} bytes, fewer than its declared size {len} (did the file shrink?)"
        )));
    }
    upload::ensure_ended(input)?;
    Ok(h.finalize())
}

/// Seals `len` plaintext bytes from the start of `input` into a blob and
/// hands each piece to `emit` (false: stop early).
fn seal<R: Read + Seek>(
    input: &mut R,
    len: u64,
    key: &ContentKey,
    mut emit: impl FnMut(Vec<u8>) -> Result<bool, ClientError>,
) -> Result<(), ClientError> {
    input.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let sealer = BlobSealer::new(key);
    if !emit(sealer.header_bytes().to_vec())? {
        return Ok(());
    }
    upload::seal_all(input, len, SEGMENT, sealer, emit)?;
    Ok(())
}

/// Runs blocking input work on the blocking pool, handing the input back.
async fn on_input<R, T>(
    mut input: R,
    f: impl FnOnce(&mut R) -> Result<T, ClientError> + Send + 'static,
) -> Result<(R, T), ClientError>
where
    R: Read + Seek + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&mut input).map(|t| (input, t)))
        .await
        .map_err(|e| ClientError::Invalid(format!("input task failed: {e}")))?
}

impl Patient {
    /// Uploads `len` bytes of `input` as a deduplicated record: stored once
    /// however many records (of any owner, under the server's `global`
    /// scope) hold the same content. Returns the record and whether new
    /// bytes were stored.
    pub async fn upload_dedup<R>(
        &self,
        partition: &str,
        input: R,
        len: u64,
        progress: Progress,
    ) -> Result<(Record, Stored), ClientError>
    where
        R: Read + Seek + Send + 'static,
    {
        check_partition(partition)?;
        let p = progress.clone();
        let (input, digest) = on_input(input, move |i| digest(i, len, &p)).await?;

        // Server-aided content key: each of t nodes sees only a blinded point
        // and evaluates its share of the key.
        let (state, blinded) = sesphr_dedup::blind(&mut rand::rng(), &digest).map_err(dedup_err)?;
        let evaluated = self
            .clients
            .nodes
            .content_key(&blinded, &self.notices)
            .await?;
        let output = sesphr_dedup::finalize(state, &digest, &evaluated).map_err(|_| {
            ClientError::Verification(
                "the re-encryption nodes' OPRF shares combine to no valid evaluation".into(),
            )
        })?;
        let content_key = sesphr_dedup::content_key(&output);

        let key = content_key.clone();
        let p = progress.clone();
        let (input, blob_id) = on_input(input, move |i| {
            let mut h = Sha256Hasher::new();
            let mut done = 0u64;
            seal(i, len, &key, |piece| {
                h.update(&piece);
                done += piece.len() as u64;
                p(len / 3 + done.min(len) / 3);
                Ok(true)
            })?;
            Ok(h.finalize())
        })
        .await?;
        let query = self
            .clients
            .cloud
            .clone()
            .query_blob(unary(proto::QueryBlobRequest {
                blob_id: blob_id.to_vec(),
            }))
            .await
            .map_err(rpc("CloudStorage"))?
            .into_inner();

        // The record's own key wraps the content key.
        let fresh = self.new_record(partition)?;
        let draft = fresh.draft.clone().with_key_source(DemKeySource::External);
        // The wrapped key is bound to the unsigned header; the owner's
        // signature then binds header, blob and wrapped key together.
        let wrapped = sesphr_dedup::wrap_content_key(
            &mut rand::rng(),
            fresh.kem_key.as_bytes(),
            &content_key,
            draft.unsigned_bytes(),
        );
        let header = draft.sign(
            &self.master.signing_key(),
            &binding(&blob_id, wrapped.as_ref()),
        );
        let upload_header = |ownership_proof: Vec<u8>, ciphertext_size: u64| proto::RecordUpload {
            blob_id: blob_id.to_vec(),
            wrapped_content_key: wrapped.to_vec(),
            ownership_proof,
            ..fresh.upload_header(partition, header.to_bytes(), ciphertext_size)
        };

        if query.exists {
            let challenge = Challenge::from_bytes(&query.challenge).map_err(|_| {
                ClientError::Verification("CloudStorage sent a malformed challenge".into())
            })?;
            let key = content_key.clone();
            let (_, proof) = on_input(input, move |i| {
                let mut builder = ProofBuilder::new(&challenge);
                seal(i, len, &key, |piece| {
                    builder.update(&piece).map_err(dedup_err)?;
                    Ok(true)
                })?;
                builder.finish().map_err(dedup_err)
            })
            .await?;
            let first = proto::PutRecordRequest {
                part: Some(proto::put_record_request::Part::Header(upload_header(
                    proof.to_bytes(),
                    query.blob_size,
                ))),
            };
            let resp = self
                .clients
                .cloud
                .clone()
                .put_record(futures::stream::iter(vec![first]))
                .await
                .map_err(rpc("CloudStorage"))?
                .into_inner();
            progress(len);
            return Ok((
                crate::types::as_uploaded(
                    record_of(resp.record)?,
                    &fresh.record_id,
                    self.user_id(),
                    partition,
                    fresh.epoch,
                )?,
                Stored::Deduplicated,
            ));
        }

        let first = upload_header(Vec::new(), blob_len(len));
        let key = content_key.clone();
        let mut input = input;
        let rec = upload::put_streamed(&self.clients, first, move |send| {
            let mut done = 0u64;
            seal(&mut input, len, &key, |piece| {
                done += piece.len() as u64;
                progress(2 * len / 3 + done.min(len) / 3);
                Ok(send(piece))
            })
        })
        .await?;
        Ok((rec, Stored::New))
    }
}

/// Opens a deduplicated record: unwraps its content key with the record's
/// KEM key and decrypts the blob segment by segment.
pub(super) async fn download_blob(
    meta: &proto::RecordMeta,
    header: RecordHeader,
    kem_key: &KemKey,
    mut stream: tonic::Streaming<proto::GetRecordResponse>,
    out: &mut (dyn std::io::Write + Send),
    progress: Progress,
) -> Result<(), ClientError> {
    if header.key_source() != DemKeySource::External {
        return Err(ClientError::Verification(
            "a deduplicated record's header must use an external key".into(),
        ));
    }
    let content_key = sesphr_dedup::unwrap_content_key(
        kem_key.as_bytes(),
        &meta.wrapped_content_key,
        header.unsigned_bytes(),
    )
    .map_err(|_| ClientError::Crypto(crypto::Error::DecryptionFailed))?;
    // The blob's header comes first; its segments are then opened on
    // every core, as a record's are.
    let mut blob_hash = Sha256Hasher::new();
    let mut done = 0u64;
    let mut seen = |chunk: &[u8]| {
        blob_hash.update(chunk);
        done += chunk.len() as u64;
        progress(done);
    };
    let mut head = Vec::with_capacity(BLOB_HEADER_LEN);
    while head.len() < BLOB_HEADER_LEN {
        let Some(chunk) = parallel::next_chunk(&mut stream).await? else {
            return Err(ClientError::Crypto(crypto::Error::Truncated));
        };
        seen(&chunk);
        head.extend_from_slice(&chunk);
    }
    let mut opener = BlobOpener::new(&content_key);
    opener
        .push(&head[..BLOB_HEADER_LEN])
        .map_err(|_| ClientError::Crypto(crypto::Error::DecryptionFailed))?;
    let (_, cipher) = opener
        .into_parallel()
        .map_err(|_| ClientError::Crypto(crypto::Error::DecryptionFailed))?;
    let opener = parallel::ParallelOpener::new(cipher);
    parallel::open_stream(opener, &head[BLOB_HEADER_LEN..], &mut stream, out, seen).await?;
    if blob_hash.finalize().as_slice() != meta.blob_id.as_slice() {
        return Err(ClientError::Verification(
            "the blob CloudStorage served does not match its id".into(),
        ));
    }
    Ok(())
}
