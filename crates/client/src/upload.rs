//! The one upload path both plain and deduplicated records take: a
//! PutRecord stream of the record's header, then sealed chunks produced on
//! the blocking pool behind a bounded queue, so memory stays at a few
//! segments whatever the record size.

use std::io::Read;

use sesphr::proto::{self, put_record_request};
use sesphr_crypto::stream::SegmentCipher;
use sesphr_crypto::{RecordSealer, RecordSegmentSealer};
use sesphr_dedup::BlobSealer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::parallel::{self, SealAt};
use crate::types::reply_to_upload;
use crate::{ClientError, Record, raw::MeshClients, rpc};

/// Sealed segments queued ahead of the network during an upload.
const UPLOAD_QUEUE: usize = 2;

/// A streaming sealer: every segment but the last is exactly one segment
/// long; the last one consumes the sealer.
pub(crate) trait SegmentSealer: Sized {
    /// The same sealer, addressed by index from any thread.
    type Parallel: SealAt;
    fn seal_segment(&mut self, buf: &mut Vec<u8>) -> Result<(), ClientError>;
    fn seal_last(self, buf: &mut Vec<u8>) -> Result<(), ClientError>;
    fn into_parallel(self) -> Result<Self::Parallel, ClientError>;
}

impl SegmentSealer for RecordSealer {
    type Parallel = RecordSegmentSealer;

    fn seal_segment(&mut self, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        Ok(self.seal_segment_in_place(buf)?)
    }

    fn seal_last(self, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        Ok(self.seal_last_in_place(buf)?)
    }

    fn into_parallel(self) -> Result<Self::Parallel, ClientError> {
        Ok(RecordSealer::into_parallel(self)?)
    }
}

impl SegmentSealer for BlobSealer {
    type Parallel = SegmentCipher;

    fn seal_segment(&mut self, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        self.seal_segment_in_place(buf)
            .map_err(crate::dedup::dedup_err)
    }

    fn seal_last(self, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        self.seal_last_in_place(buf)
            .map_err(crate::dedup::dedup_err)
    }

    fn into_parallel(self) -> Result<Self::Parallel, ClientError> {
        BlobSealer::into_parallel(self).map_err(crate::dedup::dedup_err)
    }
}

/// Reads exactly `len` bytes from `input`, seals them in segments of `seg`
/// bytes and hands them to `emit` in order (false: stop early): on every
/// core when there is more than one segment, where it is otherwise.
/// Returns whether every segment was emitted.
pub(crate) fn seal_all<S: SegmentSealer>(
    input: &mut impl Read,
    len: u64,
    seg: u64,
    sealer: S,
    emit: impl FnMut(Vec<u8>) -> Result<bool, ClientError>,
) -> Result<bool, ClientError> {
    if parallel::worth_it(len, seg) {
        let sealer = sealer.into_parallel()?;
        parallel::seal_segments(input, len, seg, &sealer, emit)
    } else {
        seal_segments(input, len, seg, sealer, emit)
    }
}

pub(crate) fn read_err(e: std::io::Error) -> ClientError {
    ClientError::Io {
        path: "input".into(),
        source: e,
    }
}

/// Refuses an input that goes on after the `len` bytes it declared and
/// that were read: it must end where it said it would.
pub(crate) fn ensure_ended(input: &mut impl Read) -> Result<(), ClientError> {
    if input.read(&mut [0u8; 1]).map_err(read_err)? != 0 {
        return Err(ClientError::Invalid(
            "input is longer than its declared size (did the file grow?)".into(),
        ));
    }
    Ok(())
}

/// Reads exactly `len` bytes from `input` in segments of `seg` bytes, seals
/// each and hands it to `emit` (false: stop early). Returns whether every
/// segment was emitted. An empty input is one empty last segment.
pub(crate) fn seal_segments<S: SegmentSealer>(
    input: &mut impl Read,
    len: u64,
    seg: u64,
    sealer: S,
    mut emit: impl FnMut(Vec<u8>) -> Result<bool, ClientError>,
) -> Result<bool, ClientError> {
    let tag = sesphr_crypto::record::TAG_LEN.max(sesphr_dedup::convergent::TAG_LEN);
    let mut remaining = len;
    let mut sealer = Some(sealer);
    while let Some(mut s) = sealer.take() {
        let n = remaining.min(seg) as usize;
        let mut buf = Vec::with_capacity(n + tag);
        buf.resize(n, 0);
        input.read_exact(&mut buf).map_err(read_err)?;
        remaining -= n as u64;
        if remaining == 0 {
            s.seal_last(&mut buf)?;
        } else {
            s.seal_segment(&mut buf)?;
            sealer = Some(s);
        }
        if !emit(buf)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Hands one chunk to the upload stream; false once the call has ended.
pub(crate) type ChunkSink<'a> = &'a mut dyn FnMut(Vec<u8>) -> bool;

/// Uploads one record: `header` first, then every chunk `produce` hands its
/// sink, produced on the blocking pool while the call streams them out.
pub(crate) async fn put_streamed(
    clients: &MeshClients,
    header: proto::RecordUpload,
    produce: impl FnOnce(ChunkSink<'_>) -> Result<(), ClientError> + Send + 'static,
) -> Result<Record, ClientError> {
    // The reply must name the record chosen here (a copy of the header
    // without its bulk: nothing of it is large).
    let sent = header.clone();
    let (tx, rx) = mpsc::channel::<proto::PutRecordRequest>(UPLOAD_QUEUE);
    // The queue is empty and its receiver is here: the header always fits.
    tx.try_send(proto::PutRecordRequest {
        part: Some(put_record_request::Part::Header(header)),
    })
    .map_err(|_| ClientError::Invalid("the upload queue refused the header".into()))?;
    let sealing = tokio::task::spawn_blocking(move || {
        produce(&mut |piece: Vec<u8>| {
            tx.blocking_send(proto::PutRecordRequest {
                part: Some(put_record_request::Part::Chunk(piece.into())),
            })
            .is_ok()
        })
    });
    let reply = clients
        .cloud
        .clone()
        .put_record(ReceiverStream::new(rx))
        .await;
    let sealed = sealing
        .await
        .map_err(|e| ClientError::Invalid(format!("encryption task failed: {e}")))?;
    // A local read error explains a broken upload better than the server's
    // complaint about a short stream.
    sealed?;
    reply_to_upload(
        reply.map_err(rpc("CloudStorage"))?.into_inner().record,
        &sent,
    )
}
