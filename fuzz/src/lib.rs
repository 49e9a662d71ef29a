//! The checks behind every fuzz target: one function per decoder of bytes
//! that arrive from outside (the network, a stored database, an imported
//! file). Each must never panic, and whatever it accepts must re-encode to
//! exactly the bytes it came from (one encoding per value), so a peer cannot
//! smuggle two meanings through one check.
//!
//! `fuzz_targets/*.rs` hand these to libFuzzer (`scripts/fuzz.sh`);
//! `tests/loops.rs` runs them over seeded random and mutated inputs with
//! plain `cargo test`, on any toolchain.

use std::sync::OnceLock;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_crypto::{
    self as crypto, Capsule, CapsuleFrag, DemKey, KeyFrag, PublicKey, RecordHeader, RecordOpener,
    RecordSealer, SecretKey, VerifyingKey,
};

/// Fixed keys and values the targets verify against (deterministic, so a
/// crash reproduces from its input alone).
pub struct Fixture {
    pub delegating: PublicKey,
    pub receiving: PublicKey,
    pub verifying: VerifyingKey,
    pub capsule: Capsule,
    pub kfrag: Vec<u8>,
    pub cfrag: Vec<u8>,
    pub header: RecordHeader,
    pub signer: crypto::SigningKey,
    pub dem: [u8; 32],
}

/// Segment size of the fuzzed record streams: the smallest allowed, so
/// inputs span several.
pub const SEGMENT: u32 = 4096;

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let master = crypto::MasterSecret::generate(&mut rng);
        let (sk, delegating) = master.partition_keys("medical", 0).expect("keys");
        let signer = master.signing_key();
        let grantee = SecretKey::generate(&mut rng);
        let receiving = grantee.public_key();
        let kfrags =
            crypto::generate_kfrags(&mut rng, &sk, &receiving, &signer, 1, 1).expect("kfrags");
        let (capsule, _) = crypto::encapsulate(&mut rng, &delegating);
        let cfrag = crypto::reencrypt(&mut rng, &capsule, &kfrags[0]);
        let header =
            crypto::HeaderDraft::new(&mut rng, b"rec1", b"alice", "medical", 0, capsule.clone())
                .expect("header")
                .with_segment_size(SEGMENT)
                .expect("segment size")
                .with_key_source(crypto::record::DemKeySource::External)
                .sign(&signer, b"");
        Fixture {
            delegating,
            receiving,
            verifying: signer.verifying_key(),
            capsule,
            kfrag: kfrags[0].to_bytes().to_vec(),
            cfrag: cfrag.to_bytes().to_vec(),
            header,
            signer,
            dem: [0x42; 32],
        }
    })
}

/// Capsules arrive in record headers and `ReEncrypt` requests.
pub fn capsule(data: &[u8]) {
    if let Ok(c) = Capsule::from_bytes(data) {
        assert_eq!(&c.to_bytes()[..], data, "capsule encoding is not canonical");
    }
}

/// Kfrags arrive in `PutKfrags` and are read back from the SRS database.
pub fn kfrag(data: &[u8]) {
    let f = fixture();
    if let Ok(k) = KeyFrag::from_bytes(data) {
        assert_eq!(&k.to_bytes()[..], data, "kfrag encoding is not canonical");
        let ok = k.verify(&f.verifying, &f.delegating, &f.receiving).is_ok();
        assert!(
            !ok || data == f.kfrag.as_slice(),
            "a kfrag other than the owner's verified"
        );
    }
}

/// Cfrags arrive from the SRS at the grantee.
pub fn cfrag(data: &[u8]) {
    let f = fixture();
    if let Ok(c) = CapsuleFrag::from_bytes(data) {
        assert_eq!(&c.to_bytes()[..], data, "cfrag encoding is not canonical");
        let _ = c.verify(&f.capsule, &f.verifying, &f.delegating, &f.receiving);
    }
}

/// Record headers arrive in `PutRecord` and from CloudStorage.
pub fn record_header(data: &[u8]) {
    let _ = RecordHeader::declared_len(data);
    if let Ok(h) = RecordHeader::from_bytes(data) {
        assert_eq!(h.to_bytes(), data, "record header encoding is not canonical");
        assert_eq!(RecordHeader::declared_len(data).ok(), Some(data.len()));
        let _ = (h.owner_id(), h.record_id(), h.partition(), h.epoch(), h.capsule());
    }
}

/// Record ciphertext arrives from CloudStorage in chunks of any size. The
/// first input byte chooses the chunking; the rest is the ciphertext of the
/// fixture's header (4 KiB segments).
pub fn record_stream(data: &[u8]) {
    let _ = open_stream(data);
}

/// [`record_stream`]'s work: the plaintext length if the stream opened.
pub fn open_stream(data: &[u8]) -> Option<usize> {
    let f = fixture();
    let (&split, ct) = data.split_first()?;
    let key = DemKey::from_bytes(&f.dem).expect("32-byte key");
    let mut opener = RecordOpener::with_dem_key(f.header.clone(), &key, &f.verifying, b"")
        .expect("opener");
    let step = usize::from(split) * 37 % 5000 + 1;
    let mut plain = 0usize;
    for chunk in ct.chunks(step) {
        match opener.push(chunk) {
            Ok(segments) => {
                for s in segments {
                    assert_eq!(s.len(), SEGMENT as usize, "a middle segment is not full");
                    plain += s.len();
                }
            }
            // A failed stream stays failed: finish must refuse too.
            Err(_) => {
                assert!(opener.finish().is_err(), "finish after a failed push");
                return None;
            }
        }
    }
    let last = opener.finish().ok()?;
    plain += last.len();
    let overhead = ct.len() - plain;
    assert_eq!(
        overhead % crypto::record::SEGMENT_OVERHEAD,
        0,
        "plaintext and tags do not add up"
    );
    Some(plain)
}

/// Valid ciphertext of `len` plaintext bytes under the fixture (a seed).
pub fn sealed(len: usize) -> Vec<u8> {
    let f = fixture();
    let key = DemKey::from_bytes(&f.dem).expect("32-byte key");
    let mut sealer = RecordSealer::with_dem_key(f.header.clone(), &key, &f.signer).expect("sealer");
    let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut out = Vec::new();
    let mut chunks = plain.chunks(SEGMENT as usize).peekable();
    if chunks.peek().is_none() {
        return sealer.seal_last(&[]).expect("seal");
    }
    while let Some(c) = chunks.next() {
        if chunks.peek().is_some() {
            out.extend(sealer.seal_segment(c).expect("seal"));
        } else {
            out.extend(sealer.seal_last(c).expect("seal"));
            break;
        }
    }
    out
}

/// FHIR bundles are imported from files the patient got elsewhere.
pub fn fhir_bundle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parts) = sesphr_client::fhir::split_bundle(text, &sesphr_client::fhir::PartitionMap::default()) {
        for (partition, bundle) in parts {
            assert!(
                sesphr_identity::validate_partition(&partition).is_ok(),
                "split produced an invalid partition name {partition:?}"
            );
            assert_eq!(bundle["resourceType"], "Bundle");
        }
    }
}

/// Seed inputs per target: valid encodings and near misses.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let f = fixture();
    match target {
        "capsule" => vec![f.capsule.to_bytes().to_vec(), vec![0; 10]],
        "kfrag" => vec![f.kfrag.clone()],
        "cfrag" => vec![f.cfrag.clone()],
        "record_header" => vec![f.header.to_bytes(), f.header.to_bytes()[..20].to_vec()],
        "record_stream" => [0usize, 1, 4095, 4096, 4097, 10_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut v = vec![i as u8 * 13];
                v.extend(sealed(n));
                v
            })
            .collect(),
        "fhir_bundle" => vec![
            include_bytes!("../../tests/data/bundle.json").to_vec(),
            br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation"}}]}"#
                .to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// Every target by name.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("capsule", capsule),
    ("kfrag", kfrag),
    ("cfrag", cfrag),
    ("record_header", record_header),
    ("record_stream", record_stream),
    ("fhir_bundle", fhir_bundle),
];
