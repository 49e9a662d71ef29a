//! Proof of ownership (Halevi, Harnik, Pinkas, Shulman-Peleg, "Proofs of
//! Ownership in Remote Storage Systems", CCS 2011): the Merkle-tree scheme,
//! over the *ciphertext blob*.
//!
//! When a client claims a blob the storage already holds (same `blob_id`),
//! the server challenges it to return randomly chosen leaves of the blob
//! together with their authentication paths to the Merkle root the server
//! computed when the blob was first stored. Knowing the `blob_id` (or the
//! root) alone is not enough to be linked to the blob.
//!
//! # Tree
//!
//! ```text
//! leaves     : the blob split into LEAF_SIZE = 4096-byte leaves; the last
//!              leaf holds the remaining 1..=4096 bytes; an empty byte string
//!              is one empty leaf.  leaf_count = max(1, ceil(len / 4096))
//! leaf hash  : L_i = SHA-256(0x00 || u64be(i) || leaf_i)
//! node hash  : N   = SHA-256(0x01 || left || right)
//! levels     : level 0 = L_0 .. L_{n-1}; level j+1 pairs the nodes of level
//!              j left to right, (2p, 2p+1) -> node p; when a level has an
//!              odd number of nodes its last node is promoted unchanged (no
//!              hashing, no duplication) to be the last node of level j+1.
//! root       : the single node of the top level (L_0 when n = 1).
//! ```
//!
//! This is the RFC 6962 tree shape (split at the largest power of two below
//! n), with an index bound into each leaf hash.
//!
//! An authentication path lists, bottom-up, the sibling of the current node
//! at every level where it has one: at position p of a level with c nodes
//! the sibling is p-1 (left) if p is odd, p+1 (right) if p is even and
//! p+1 < c, and there is none if p = c-1 is even (promotion). Then
//! p <- p / 2 and c <- ceil(c / 2), until c = 1. The path length is thus a
//! function of (index, leaf_count), which the verifier enforces.
//!
//! **Leaf size.** 4 KiB balances proof size against prover memory and
//! hashing work: a proof carries k leaves plus k paths of about
//! log2(n) hashes, i.e. about 97 x (4 KiB + 15 x 32 B) = 445 KiB for a
//! 100 MiB blob, well under gRPC's default 4 MiB message limit; the prover
//! keeps 32 bytes per leaf (0.8 % of the blob, 800 KiB for 100 MiB) and
//! inner nodes add under 2 % to the hashing. 1 KiB leaves would shrink proofs
//! to ~150 KiB but quadruple the prover's memory and inner hashing; 16 KiB
//! leaves would push proofs to ~1.6 MiB. Soundness (below) is stated per
//! leaf and does not depend on the leaf size.
//!
//! # Challenge and soundness
//!
//! The server draws a fresh random 32-byte nonce and derives from it
//! k = [`DEFAULT_CHALLENGE_LEAVES`] = 97 *distinct* leaf indices, uniformly
//! (all leaves if the blob has at most k). If a prover can produce the
//! correct bytes of fewer than a fraction f of the leaves, it answers all k
//! challenged leaves with probability C(f n, k) / C(n, k) <= f^k (sampling
//! without replacement only helps). With **f = 0.75 and k = 97,
//! f^k = 2^-40.26 <= 2^-40** (SHA-256 collisions aside). "Holding" a leaf
//! means being able to output its exact bytes at proof time, by whatever
//! means (having stored it, or recomputing it from the plaintext and content
//! key); authentication paths are public-ish data and are *not* assumed
//! secret — the bound holds even if the prover knows every inner node. The
//! guarantee is about fractions of leaves: a prover holding 99 % of the blob
//! passes often. The CCS'11 paper adds an erasure code to turn "most of the
//! encoding" into "the whole file"; this crate does not (a prover who lacks
//! a quarter of the ciphertext cannot decrypt it anyway, and the blob is
//! ciphertext under a content-derived key).
//!
//! Index derivation (deterministic, so anyone can re-derive and check the
//! indices from the nonce; Floyd's algorithm, exactly k draws):
//!
//! ```text
//! if k >= n: indices = 0..n
//! word stream: block_c = SHA-256("SeSPHR-v1 pow challenge indices" || nonce ||
//!                                u64be(n) || u32be(k) || u64be(c)),  c = 0, 1, ...
//!              each block yields 4 words u64be(block[0..8]), ..., u64be(block[24..32])
//! uniform(m):  repeat r = next word until r < floor(2^64 / m) * m; return r mod m
//! S = {}
//! for j in n-k .. n-1 (inclusive, ascending):
//!     t = uniform(j + 1)
//!     if t in S: add j to S  else: add t to S
//! indices = S sorted ascending
//! ```
//!
//! **Freshness.** The nonce makes every challenge unpredictable; the server
//! must keep the issued challenge (keyed by its nonce), accept at most one
//! proof for it (single use, delete it on the first answer whatever the
//! outcome) and reject answers after an expiry it enforces
//! ([`Challenge::is_expired`], e.g. [`DEFAULT_CHALLENGE_TTL_SECS`]). The
//! proof echoes the nonce and [`verify`] checks it, binding the answer to
//! the challenge.
//!
//! # Encodings (for gRPC `bytes` fields)
//!
//! ```text
//! challenge = "SPHC" || 0x01 || nonce (32) || u64be(issued_at) || u64be(leaf_count)
//!             || u32be(count) || count x u64be(index)
//!             (1 <= leaf_count; 1 <= count <= 1024; count = min(k, leaf_count);
//!              indices must equal the derivation above from the nonce)
//! proof     = "SPHP" || 0x01 || nonce (32) || u32be(count) || count x leaf
//! leaf      = u64be(index) || u16be(len) || len bytes || u8(path_len) || path_len x 32 bytes
//!             (count <= 1024, len <= 4096, path_len <= 64; leaves in challenge order)
//! ```
//!
//! Decoders reject trailing bytes and never panic.

use std::collections::BTreeSet;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Merkle leaf size in bytes.
pub const LEAF_SIZE: usize = 4096;
/// Domain-separation byte of leaf hashes.
pub const LEAF_TAG: u8 = 0x00;
/// Domain-separation byte of inner-node hashes.
pub const NODE_TAG: u8 = 0x01;
/// Default number of challenged leaves `k`: `0.75^97 <= 2^-40`.
pub const DEFAULT_CHALLENGE_LEAVES: u32 = 97;
/// Most leaves a challenge or proof may name.
pub const MAX_CHALLENGE_LEAVES: u32 = 1024;
/// Longest authentication path (a tree of `u64` leaves is at most 64 high).
pub const MAX_PATH_LEN: usize = 64;
/// Suggested challenge lifetime in seconds.
pub const DEFAULT_CHALLENGE_TTL_SECS: u64 = 300;
/// Prefix of the hash blocks from which challenge indices are drawn.
pub const CHALLENGE_INDEX_DST: &[u8] = b"SeSPHR-v1 pow challenge indices";
/// Magic of an encoded [`Challenge`].
pub const CHALLENGE_MAGIC: [u8; 4] = *b"SPHC";
/// Magic of an encoded [`Proof`].
pub const PROOF_MAGIC: [u8; 4] = *b"SPHP";
/// Version byte of both encodings.
pub const POW_VERSION: u8 = 1;
/// Length of a challenge nonce.
pub const NONCE_LEN: usize = 32;

/// A 32-byte SHA-256 hash.
pub type Hash = [u8; 32];

/// `max(1, ceil(len / LEAF_SIZE))`: the number of leaves of a `len`-byte blob.
pub fn leaf_count_for_len(len: u64) -> u64 {
    len.div_ceil(LEAF_SIZE as u64).max(1)
}

/// `SHA-256(0x00 || u64be(index) || data)`.
pub fn leaf_hash(index: u64, data: &[u8]) -> Hash {
    let mut h = leaf_hasher(index);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_TAG]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn leaf_hasher(index: u64) -> Sha256 {
    let mut h = Sha256::new();
    h.update([LEAF_TAG]);
    h.update(index.to_be_bytes());
    h
}

enum LeafEvent<'a> {
    /// Some bytes of leaf `index`.
    Piece(u64, &'a [u8]),
    /// Leaf `index` is complete, with this hash.
    Done(u64, Hash),
}

/// Hashes a byte stream leaf by leaf, fed in chunks of any size.
#[derive(Clone)]
struct LeafStream {
    hasher: Sha256,
    len: usize,
    index: u64,
}

impl LeafStream {
    fn new() -> Self {
        Self {
            hasher: leaf_hasher(0),
            len: 0,
            index: 0,
        }
    }

    /// Feeds `data`, reporting every piece of a leaf and every completed
    /// leaf to `on`. A full leaf completes lazily, when the next byte
    /// arrives, so that [`finish`](Self::finish) knows which leaf is last.
    fn update(
        &mut self,
        mut data: &[u8],
        mut on: impl FnMut(LeafEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        while !data.is_empty() {
            if self.len == LEAF_SIZE {
                let next = self
                    .index
                    .checked_add(1)
                    .ok_or(Error::InvalidParameter("blob has too many leaves"))?;
                let done = core::mem::replace(&mut self.hasher, leaf_hasher(next));
                on(LeafEvent::Done(self.index, done.finalize().into()))?;
                self.index = next;
                self.len = 0;
            }
            let n = (LEAF_SIZE - self.len).min(data.len());
            self.hasher.update(&data[..n]);
            on(LeafEvent::Piece(self.index, &data[..n]))?;
            self.len += n;
            data = &data[n..];
        }
        Ok(())
    }

    /// Completes the last leaf; returns `(index, hash)` of it.
    fn finish(self) -> (u64, Hash) {
        (self.index, self.hasher.finalize().into())
    }
}

/// The summary of a blob's Merkle tree: root and leaf count. The server
/// stores both when it first stores a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MerkleTree {
    root: Hash,
    leaf_count: u64,
}

impl MerkleTree {
    /// The tree of an in-memory byte string.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut b = MerkleBuilder::new();
        b.update(data);
        b.finish()
    }

    /// The root hash.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The number of leaves.
    pub fn leaf_count(&self) -> u64 {
        self.leaf_count
    }
}

/// Streaming Merkle root computation: feed the blob in chunks of any size.
/// Memory is O(log n): the frontier of completed perfect subtrees (at most
/// 64 hashes) plus the running leaf hash; no leaf is buffered.
#[derive(Clone)]
pub struct MerkleBuilder {
    leaves: LeafStream,
    /// Roots of completed perfect subtrees, left to right, strictly
    /// decreasing heights.
    frontier: Vec<(u32, Hash)>,
}

impl Default for MerkleBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MerkleBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            leaves: LeafStream::new(),
            frontier: Vec::with_capacity(64),
        }
    }

    /// Absorbs the next bytes of the blob.
    pub fn update(&mut self, data: &[u8]) {
        let frontier = &mut self.frontier;
        self.leaves
            .update(data, |event| {
                if let LeafEvent::Done(_, h) = event {
                    push_frontier(frontier, h);
                }
                Ok(())
            })
            .expect("2^64 leaves cannot be fed");
    }

    /// The root and leaf count of everything absorbed.
    pub fn finish(self) -> MerkleTree {
        let mut frontier = self.frontier;
        let (last, h) = self.leaves.finish();
        push_frontier(&mut frontier, h);
        // Fold right to left: the right part is the (promoted) remainder.
        let mut iter = frontier.into_iter().rev();
        let (_, mut root) = iter.next().expect("at least one leaf");
        for (_, left) in iter {
            root = node_hash(&left, &root);
        }
        MerkleTree {
            root,
            leaf_count: last + 1,
        }
    }
}

impl core::fmt::Debug for MerkleBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MerkleBuilder")
            .field("leaf_index", &self.leaves.index)
            .finish_non_exhaustive()
    }
}

fn push_frontier(frontier: &mut Vec<(u32, Hash)>, leaf: Hash) {
    let mut node = (0u32, leaf);
    while let Some(&(height, left)) = frontier.last() {
        if height != node.0 {
            break;
        }
        frontier.pop();
        node = (height + 1, node_hash(&left, &node.1));
    }
    frontier.push(node);
}

/// A proof-of-ownership challenge, issued by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    nonce: [u8; NONCE_LEN],
    issued_at: u64,
    leaf_count: u64,
    indices: Vec<u64>,
}

impl Challenge {
    /// A fresh challenge over a blob of `leaf_count` leaves with
    /// [`DEFAULT_CHALLENGE_LEAVES`] indices; `issued_at` is the server's
    /// clock (e.g. Unix seconds), used by [`is_expired`](Self::is_expired).
    pub fn generate(
        rng: &mut (impl CryptoRng + ?Sized),
        leaf_count: u64,
        issued_at: u64,
    ) -> Result<Self> {
        Self::generate_with_k(rng, leaf_count, DEFAULT_CHALLENGE_LEAVES, issued_at)
    }

    /// [`generate`](Self::generate) with `k` (1..=1024) challenged leaves.
    pub fn generate_with_k(
        rng: &mut (impl CryptoRng + ?Sized),
        leaf_count: u64,
        k: u32,
        issued_at: u64,
    ) -> Result<Self> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        Self::from_nonce(nonce, leaf_count, k, issued_at)
    }

    /// The challenge determined by `nonce` (see the module docs for the
    /// derivation). `leaf_count >= 1`, `1 <= k <= 1024`.
    pub fn from_nonce(
        nonce: [u8; NONCE_LEN],
        leaf_count: u64,
        k: u32,
        issued_at: u64,
    ) -> Result<Self> {
        if leaf_count == 0 {
            return Err(Error::InvalidParameter("a blob has at least one leaf"));
        }
        if !(1..=MAX_CHALLENGE_LEAVES).contains(&k) {
            return Err(Error::InvalidParameter("a challenge names 1..=1024 leaves"));
        }
        Ok(Self {
            indices: derive_indices(&nonce, leaf_count, k),
            nonce,
            issued_at,
            leaf_count,
        })
    }

    /// The 32-byte nonce, also the natural key to store the challenge under.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// When the challenge was issued (the caller's clock).
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// The leaf count of the challenged blob.
    pub fn leaf_count(&self) -> u64 {
        self.leaf_count
    }

    /// The challenged leaf indices: distinct, ascending, `< leaf_count`.
    pub fn indices(&self) -> &[u64] {
        &self.indices
    }

    /// True unless `issued_at <= now < issued_at + ttl` (a clock that went
    /// backwards also expires the challenge).
    pub fn is_expired(&self, now: u64, ttl: u64) -> bool {
        now < self.issued_at || now - self.issued_at >= ttl
    }

    /// The encoding described in the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + NONCE_LEN + 8 + 8 + 4 + 8 * self.indices.len());
        out.extend_from_slice(&CHALLENGE_MAGIC);
        out.push(POW_VERSION);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.leaf_count.to_be_bytes());
        let count = u32::try_from(self.indices.len()).expect("at most 1024 indices");
        out.extend_from_slice(&count.to_be_bytes());
        for i in &self.indices {
            out.extend_from_slice(&i.to_be_bytes());
        }
        out
    }

    /// Strict decoder: exact length, valid counts, and indices equal to
    /// the ones the nonce derives.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "challenge";
        let mut r = Reader::new(bytes, W);
        if r.array::<4>()? != CHALLENGE_MAGIC || r.u8()? != POW_VERSION {
            return Err(Error::Malformed(W));
        }
        let nonce = r.array::<NONCE_LEN>()?;
        let issued_at = r.u64()?;
        let leaf_count = r.u64()?;
        let count = r.u32()?;
        if leaf_count == 0 || count == 0 || count > MAX_CHALLENGE_LEAVES {
            return Err(Error::Malformed(W));
        }
        if u64::from(count) > leaf_count {
            return Err(Error::Malformed(W));
        }
        // Length check before any allocation.
        if r.remaining() != 8 * count as usize {
            return Err(Error::Malformed(W));
        }
        let mut indices = Vec::with_capacity(count as usize);
        for _ in 0..count {
            indices.push(r.u64()?);
        }
        r.end()?;
        let challenge = Self::from_nonce(nonce, leaf_count, count, issued_at)
            .map_err(|_| Error::Malformed(W))?;
        if challenge.indices != indices {
            return Err(Error::Malformed(W));
        }
        Ok(challenge)
    }
}

/// Floyd's sampling of `min(k, n)` distinct indices in `0..n` from the
/// nonce's hash stream (module docs).
fn derive_indices(nonce: &[u8; NONCE_LEN], n: u64, k: u32) -> Vec<u64> {
    let k64 = u64::from(k);
    if k64 >= n {
        return (0..n).collect();
    }
    let mut words = WordStream {
        nonce,
        n,
        k,
        counter: 0,
        block: [0; 32],
        used: 4,
    };
    let mut set = BTreeSet::new();
    for j in (n - k64)..n {
        let t = words.uniform(j + 1);
        if !set.insert(t) {
            set.insert(j);
        }
    }
    set.into_iter().collect()
}

struct WordStream<'a> {
    nonce: &'a [u8; NONCE_LEN],
    n: u64,
    k: u32,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl WordStream<'_> {
    fn next_word(&mut self) -> u64 {
        if self.used == 4 {
            let mut h = Sha256::new();
            h.update(CHALLENGE_INDEX_DST);
            h.update(self.nonce);
            h.update(self.n.to_be_bytes());
            h.update(self.k.to_be_bytes());
            h.update(self.counter.to_be_bytes());
            self.block = h.finalize().into();
            self.counter += 1;
            self.used = 0;
        }
        let w = &self.block[8 * self.used..8 * self.used + 8];
        self.used += 1;
        u64::from_be_bytes(w.try_into().expect("8 bytes"))
    }

    /// Uniform in `0..m` (`m >= 1`) by rejection sampling.
    fn uniform(&mut self, m: u64) -> u64 {
        let m128 = u128::from(m);
        let zone = ((1u128 << 64) / m128) * m128;
        loop {
            let r = self.next_word();
            if u128::from(r) < zone {
                return r % m;
            }
        }
    }
}

/// One answered leaf: its index, its bytes and its authentication path
/// (bottom-up sibling hashes, see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofLeaf {
    /// Leaf index.
    pub index: u64,
    /// The leaf's bytes (4096, or 0..=4096 for the last leaf).
    pub data: Vec<u8>,
    /// Sibling hashes from the leaf level up.
    pub path: Vec<Hash>,
}

/// The client's answer to a [`Challenge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The nonce of the challenge being answered.
    pub nonce: [u8; NONCE_LEN],
    /// One entry per challenged index, in the challenge's (ascending) order.
    pub leaves: Vec<ProofLeaf>,
}

impl Proof {
    /// The encoding described in the module docs.
    ///
    /// # Panics
    ///
    /// If a hand-built proof exceeds the encoding's field widths (a leaf of
    /// more than 65535 bytes, a path of more than 255 hashes, 2^32 leaves);
    /// proofs from [`ProofBuilder`] or [`Proof::from_bytes`] never do.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self
            .leaves
            .iter()
            .map(|l| 8 + 2 + l.data.len() + 1 + 32 * l.path.len())
            .sum();
        let mut out = Vec::with_capacity(4 + 1 + NONCE_LEN + 4 + size);
        out.extend_from_slice(&PROOF_MAGIC);
        out.push(POW_VERSION);
        out.extend_from_slice(&self.nonce);
        let count = u32::try_from(self.leaves.len()).expect("proof has fewer than 2^32 leaves");
        out.extend_from_slice(&count.to_be_bytes());
        for leaf in &self.leaves {
            out.extend_from_slice(&leaf.index.to_be_bytes());
            let len = u16::try_from(leaf.data.len()).expect("leaf is at most 4096 bytes");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&leaf.data);
            let path_len = u8::try_from(leaf.path.len()).expect("path is at most 64 hashes");
            out.push(path_len);
            for h in &leaf.path {
                out.extend_from_slice(h);
            }
        }
        out
    }

    /// Strict decoder: magic, version, bounded counts and lengths, no
    /// trailing bytes. Semantic checks are [`verify`]'s job.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "proof";
        let mut r = Reader::new(bytes, W);
        if r.array::<4>()? != PROOF_MAGIC || r.u8()? != POW_VERSION {
            return Err(Error::Malformed(W));
        }
        let nonce = r.array::<NONCE_LEN>()?;
        let count = r.u32()?;
        if count > MAX_CHALLENGE_LEAVES {
            return Err(Error::Malformed(W));
        }
        let mut leaves = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let index = r.u64()?;
            let len = usize::from(r.u16()?);
            if len > LEAF_SIZE {
                return Err(Error::Malformed(W));
            }
            let data = r.take(len)?.to_vec();
            let path_len = usize::from(r.u8()?);
            if path_len > MAX_PATH_LEN {
                return Err(Error::Malformed(W));
            }
            let mut path = Vec::with_capacity(path_len);
            for _ in 0..path_len {
                path.push(r.array::<32>()?);
            }
            leaves.push(ProofLeaf { index, data, path });
        }
        r.end()?;
        Ok(Self { nonce, leaves })
    }
}

/// Builds the [`Proof`] for a challenge while streaming the client's copy
/// of the blob once, in chunks of any size.
///
/// Memory: 32 bytes per leaf (every leaf hash, needed for the paths: 800 KiB
/// for a 100 MiB blob), plus the challenged leaves (at most k x 4 KiB, about
/// 390 KiB for k = 97) and their paths; the inner levels are computed in
/// place at [`finish`](Self::finish).
pub struct ProofBuilder {
    nonce: [u8; NONCE_LEN],
    leaf_count: u64,
    indices: Vec<u64>,
    /// Position in `indices` of the next challenged leaf not yet complete.
    next: usize,
    leaves: LeafStream,
    hashes: Vec<Hash>,
    collected: Vec<Vec<u8>>,
}

impl ProofBuilder {
    /// A builder answering `challenge`.
    pub fn new(challenge: &Challenge) -> Self {
        // Never trust a peer's leaf count for a large up-front allocation.
        let reserve = challenge.leaf_count.min(1 << 16) as usize;
        Self {
            nonce: challenge.nonce,
            leaf_count: challenge.leaf_count,
            indices: challenge.indices.clone(),
            next: 0,
            leaves: LeafStream::new(),
            hashes: Vec::with_capacity(reserve),
            collected: challenge.indices.iter().map(|_| Vec::new()).collect(),
        }
    }

    /// Absorbs the next bytes of the blob. Fails once the blob has more
    /// leaves than the challenge says.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        let Self {
            leaf_count,
            indices,
            next,
            leaves,
            hashes,
            collected,
            ..
        } = self;
        leaves.update(data, |event| match event {
            LeafEvent::Piece(index, piece) => {
                if index < *leaf_count && indices.get(*next) == Some(&index) {
                    collected[*next].extend_from_slice(piece);
                }
                Ok(())
            }
            LeafEvent::Done(index, hash) => {
                if index >= *leaf_count {
                    return Err(Error::InvalidParameter(
                        "blob has more leaves than the challenge",
                    ));
                }
                hashes.push(hash);
                if indices.get(*next) == Some(&index) {
                    *next += 1;
                }
                Ok(())
            }
        })?;
        if leaves.index >= *leaf_count {
            return Err(Error::InvalidParameter(
                "blob has more leaves than the challenge",
            ));
        }
        Ok(())
    }

    /// Completes the proof. Fails with [`Error::InvalidParameter`] if the
    /// blob's leaf count differs from the challenge's.
    pub fn finish(self) -> Result<Proof> {
        let Self {
            nonce,
            leaf_count,
            indices,
            leaves,
            mut hashes,
            collected,
            ..
        } = self;
        let (last, h) = leaves.finish();
        if last + 1 != leaf_count {
            return Err(Error::InvalidParameter(
                "blob leaf count differs from the challenge's",
            ));
        }
        hashes.push(h);
        let mut positions: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        let mut paths: Vec<Vec<Hash>> = indices.iter().map(|_| Vec::new()).collect();
        while hashes.len() > 1 {
            let c = hashes.len();
            for (p, path) in positions.iter_mut().zip(paths.iter_mut()) {
                let sibling = *p ^ 1;
                if sibling < c {
                    path.push(hashes[sibling]);
                }
                *p /= 2;
            }
            let half = c / 2;
            for q in 0..half {
                hashes[q] = node_hash(&hashes[2 * q], &hashes[2 * q + 1]);
            }
            if c % 2 == 1 {
                hashes[half] = hashes[c - 1];
                hashes.truncate(half + 1);
            } else {
                hashes.truncate(half);
            }
        }
        let leaves = indices
            .into_iter()
            .zip(collected)
            .zip(paths)
            .map(|((index, data), path)| ProofLeaf { index, data, path })
            .collect();
        Ok(Proof { nonce, leaves })
    }
}

impl core::fmt::Debug for ProofBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProofBuilder")
            .field("leaf_count", &self.leaf_count)
            .field("leaf_index", &self.leaves.index)
            .finish_non_exhaustive()
    }
}

/// Builds the proof for `challenge` from an in-memory blob.
pub fn prove(challenge: &Challenge, blob: &[u8]) -> Result<Proof> {
    let mut b = ProofBuilder::new(challenge);
    b.update(blob)?;
    b.finish()
}

/// Recomputes the root from a leaf hash and its path; `None` if the path
/// has the wrong length for `(index, leaf_count)`.
fn root_from_path(index: u64, leaf_count: u64, leaf: Hash, path: &[Hash]) -> Option<Hash> {
    let mut h = leaf;
    let mut p = index;
    let mut c = leaf_count;
    let mut siblings = path.iter();
    while c > 1 {
        if p % 2 == 1 {
            h = node_hash(siblings.next()?, &h);
        } else if p + 1 < c {
            h = node_hash(&h, siblings.next()?);
        }
        p /= 2;
        c = c.div_ceil(2);
    }
    siblings.next().is_none().then_some(h)
}

/// Server-side verification of a proof of ownership against the stored
/// `root` and `leaf_count` of the blob and the issued (stored, unexpired,
/// not yet answered) `challenge`.
///
/// Checks that the proof answers this challenge's nonce, that every
/// challenged index is answered exactly once and in order with nothing
/// else, that every leaf has the length its position requires, and that
/// every path has the right length and recomputes to `root`. Fails with
/// [`Error::VerificationFailed`] (no detail), or [`Error::InvalidParameter`]
/// if `leaf_count` is not the challenge's.
pub fn verify(root: &Hash, leaf_count: u64, challenge: &Challenge, proof: &Proof) -> Result<()> {
    if leaf_count != challenge.leaf_count {
        return Err(Error::InvalidParameter(
            "leaf count differs from the challenge's",
        ));
    }
    if proof.nonce != challenge.nonce || proof.leaves.len() != challenge.indices.len() {
        return Err(Error::VerificationFailed);
    }
    for (leaf, &index) in proof.leaves.iter().zip(&challenge.indices) {
        if leaf.index != index {
            return Err(Error::VerificationFailed);
        }
        let len_ok = if index + 1 < leaf_count {
            leaf.data.len() == LEAF_SIZE
        } else {
            leaf.data.len() <= LEAF_SIZE && (!leaf.data.is_empty() || leaf_count == 1)
        };
        if !len_ok {
            return Err(Error::VerificationFailed);
        }
        let h = leaf_hash(index, &leaf.data);
        if root_from_path(index, leaf_count, h, &leaf.path).as_ref() != Some(root) {
            return Err(Error::VerificationFailed);
        }
    }
    Ok(())
}

/// Bounds-checked big-endian reader; every failure is `Malformed(what)`.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::Malformed(self.what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn end(&self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed(self.what))
        }
    }
}
