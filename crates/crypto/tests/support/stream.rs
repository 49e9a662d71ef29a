//! The record-streaming fixture shared by `benches/stream.rs` and
//! `tests/timing.rs`: 64 MiB of seeded random plaintext under one record
//! header, and the in-place seal-then-open round trip both of them time.

use std::io::Write;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sesphr_crypto::{
    KemKey, RecordHeader, RecordOpener, RecordReader, RecordSealer, RecordWriter, SecretKey,
    SigningKey, VerifyingKey, decrypt_record, encapsulate, encrypt_record,
};

/// Plaintext size.
pub const SIZE: usize = 64 << 20;

pub struct Stream {
    pub data: Vec<u8>,
    pub kem_key: KemKey,
    pub header: RecordHeader,
    pub signer: SigningKey,
    pub owner: VerifyingKey,
    /// Plaintext segment size, as a length.
    pub seg: usize,
}

pub fn stream() -> Stream {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut data = vec![0u8; SIZE];
    rng.fill_bytes(&mut data);
    let owner = SecretKey::generate(&mut rng);
    let (capsule, kem_key) = encapsulate(&mut rng, &owner.public_key());
    let signer = SigningKey::generate(&mut rng);
    let header =
        RecordHeader::new(&mut rng, b"bench", b"owner", "medical", 0, capsule, &signer).unwrap();
    let seg = header.segment_size() as usize;
    Stream {
        data,
        kem_key,
        header,
        owner: signer.verifying_key(),
        signer,
        seg,
    }
}

impl Stream {
    /// The plaintext split into segments, each in its own buffer with room
    /// for the tag (as read from a file or the network).
    pub fn segments(&self) -> Vec<Vec<u8>> {
        self.data
            .chunks(self.seg)
            .map(|c| {
                let mut v = Vec::with_capacity(self.seg + sesphr_crypto::record::SEGMENT_OVERHEAD);
                v.extend_from_slice(c);
                v
            })
            .collect()
    }

    /// Seals `segments` in place, then opens them in place again.
    pub fn seal_open_in_place(&self, segments: &mut [Vec<u8>]) {
        let mut sealer =
            RecordSealer::new(self.header.clone(), &self.kem_key, &self.signer).unwrap();
        let mut opener =
            RecordOpener::new(self.header.clone(), &self.kem_key, &self.owner).unwrap();
        let (last, body) = segments.split_last_mut().unwrap();
        for s in body.iter_mut() {
            sealer.seal_segment_in_place(s).unwrap();
        }
        sealer.seal_last_in_place(last).unwrap();
        for s in body.iter_mut() {
            opener.open_segment_in_place(s).unwrap();
        }
        opener.open_last_in_place(last).unwrap();
    }

    /// A buffer that holds the whole record without growing.
    pub fn record_buf(&self) -> Vec<u8> {
        Vec::with_capacity(SIZE + SIZE / self.seg * 16 + 1024)
    }

    /// `encrypt_record` into `record`, then `decrypt_record` into a sink.
    pub fn encrypt_decrypt_record(&self, record: &mut Vec<u8>) {
        record.clear();
        let sealer = RecordSealer::new(self.header.clone(), &self.kem_key, &self.signer).unwrap();
        encrypt_record(&self.data[..], &mut *record, sealer).unwrap();
        decrypt_record(&record[..], std::io::sink(), |h| {
            RecordOpener::new(h.clone(), &self.kem_key, &self.owner)
        })
        .unwrap();
    }

    /// The `std::io` adapters end to end: `RecordWriter` into `record`,
    /// then `RecordReader` into a sink. Returns the plaintext length read.
    pub fn write_read_record(&self, record: &mut Vec<u8>) -> u64 {
        record.clear();
        let sealer = RecordSealer::new(self.header.clone(), &self.kem_key, &self.signer).unwrap();
        let mut w = RecordWriter::new(&mut *record, sealer).unwrap();
        w.write_all(&self.data).unwrap();
        w.finish().unwrap();
        let mut src = &record[..];
        let h = RecordHeader::read_from(&mut src).unwrap();
        let opener = RecordOpener::new(h, &self.kem_key, &self.owner).unwrap();
        let mut reader = RecordReader::new(src, opener);
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap()
    }
}
