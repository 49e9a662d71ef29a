//! Reading a record's content back: ranged GETs of a bounded size, each
//! cut into the chunks the contract yields, so memory stays bounded however
//! large the record.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore};
use sesphr_domain::pg::pg_error;

use super::Inner;
use super::objects::{is_not_found, s3_error};
use crate::{ChunkIter, DomainError, READ_CHUNK, validate_record_id};

/// Bytes per ranged GET.
const RANGE: u64 = 4 << 20;

/// Where a record's bytes are: its own object or its blob's.
const CONTENT_OF: &str = "SELECT r.size, COALESCE(r.object_key, b.object_key) \
     FROM cloud_storage.records r \
     LEFT JOIN cloud_storage.blobs b ON b.scope = r.blob_scope AND b.blob_id = r.blob_id \
     WHERE r.record_id = $1";

pub(crate) fn chunks(inner: &Arc<Inner>, record_id: &str) -> ChunkIter {
    let found = validate_record_id(record_id)
        .map_err(DomainError::from)
        .and_then(|()| inner.block_on(content_of(inner, record_id)));
    match found {
        Ok(Some((size, key))) => Box::new(Reader {
            inner: inner.clone(),
            record_id: record_id.to_owned(),
            path: inner.objects.path(&key),
            key,
            size,
            pos: 0,
            buf: Bytes::new(),
            failed: false,
        }),
        Ok(None) => Box::new(std::iter::once(Err(DomainError::Unknown(format!(
            "record {record_id} not found"
        ))))),
        Err(e) => Box::new(std::iter::once(Err(e))),
    }
}

async fn content_of(inner: &Inner, record_id: &str) -> Result<Option<(u64, String)>, DomainError> {
    let conn = inner.pg.client().await?;
    let row = conn
        .query_opt(CONTENT_OF, &[&record_id])
        .await
        .map_err(pg_error)?;
    row.map(|row| {
        let key: Option<String> = row.get(1);
        let key = key.ok_or_else(|| {
            DomainError::Corrupt(format!("record {record_id}: its blob is not stored"))
        })?;
        Ok((super::size_from_db(row.get(0))?, key))
    })
    .transpose()
}

struct Reader {
    inner: Arc<Inner>,
    record_id: String,
    key: String,
    path: Path,
    size: u64,
    /// Bytes fetched so far.
    pos: u64,
    /// Fetched and not yet yielded.
    buf: Bytes,
    failed: bool,
}

impl Reader {
    async fn fetch(&self, range: Range<u64>) -> Result<Bytes, DomainError> {
        let id = &self.record_id;
        let want = range.end - range.start;
        let got = self
            .inner
            .objects
            .s3
            .get_opts(&self.path, GetOptions::new().with_range(Some(range)))
            .await;
        let got = match got {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Err(self.gone().await),
            Err(e) => return Err(s3_error(&format!("record {id}: reading"), e)),
        };
        if got.meta.size != self.size {
            return Err(DomainError::Corrupt(format!(
                "record {id}: object is {} bytes, its metadata says {}",
                got.meta.size, self.size
            )));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| s3_error(&format!("record {id}: reading"), e))?;
        if bytes.len() as u64 != want {
            return Err(DomainError::Corrupt(format!(
                "record {id}: object is shorter than its metadata says"
            )));
        }
        Ok(bytes)
    }

    /// Why the object is not there: the record was deleted meanwhile, or
    /// the bucket lost what the metadata names.
    async fn gone(&self) -> DomainError {
        let id = &self.record_id;
        match content_of(&self.inner, id).await {
            Ok(Some((_, key))) if key == self.key => {
                DomainError::Corrupt(format!("record {id}: its ciphertext object is missing"))
            }
            Ok(_) => DomainError::Unknown(format!("record {id} was deleted while being read")),
            Err(e) => e,
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Vec<u8>, DomainError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.buf.is_empty() {
            if self.pos == self.size {
                return None;
            }
            let end = (self.pos + RANGE).min(self.size);
            match self.inner.block_on(self.fetch(self.pos..end)) {
                Ok(b) => {
                    self.pos = end;
                    self.buf = b;
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let n = READ_CHUNK.min(self.buf.len());
        Some(Ok(self.buf.split_to(n).to_vec()))
    }
}
