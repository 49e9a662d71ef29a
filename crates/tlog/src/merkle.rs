//! RFC 9162 §2.1 Merkle tree hashing, proofs and their verification.
//!
//! A log of `n` entries `d[0] .. d[n-1]` has the Merkle Tree Hash
//!
//! ```text
//! MTH({})       = SHA-256()
//! MTH({d[0]})   = SHA-256(0x00 || d[0])                      leaf hash
//! MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])) node hash
//!                 with k the largest power of two < n
//! ```
//!
//! A log that stores every *complete* subtree's hash — level `l`, index `i`
//! covering leaves `[i·2^l, (i+1)·2^l)` — answers every root and proof with
//! O(log n) reads ([`HashSource`]); appending leaf `n` adds the hashes
//! [`appended`] returns. Verification ([`verify_inclusion`],
//! [`verify_consistency`]) follows RFC 9162 §2.1.3.2 and §2.1.4.2 step by
//! step and never panics on hostile input.

use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// Longest proof a tree of up to 2^64 leaves can need (consistency proofs
/// are at most one longer than the tree's height).
pub const MAX_PROOF_LEN: usize = 65;

/// `MTH({})`: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Where a log keeps its complete subtrees' hashes.
pub trait HashSource {
    type Error;
    /// The hash of the complete subtree at `level` and `index`, i.e. over
    /// leaves `[index << level, (index + 1) << level)`. Only ever asked for
    /// subtrees that are complete in the tree the caller named.
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("sizes {first} and {second} are not 0 < first <= second")]
    BadSizes { first: u64, second: u64 },
    #[error("proof has {got} hashes, {want} expected")]
    WrongLength { got: usize, want: usize },
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// The subtree hashes that become complete when leaf number `size` (the
/// tree's current size, 0-based) with hash `leaf` is appended: `(level,
/// index, hash)` from the leaf itself upwards. `source` must hold every
/// complete subtree of the first `size` leaves.
pub fn appended<S: HashSource>(
    size: u64,
    leaf: Hash,
    source: &S,
) -> Result<Vec<(u8, u64, Hash)>, S::Error> {
    let mut out = vec![(0u8, size, leaf)];
    let (mut level, mut index, mut hash) = (0u8, size, leaf);
    while index & 1 == 1 {
        let left = source.subtree(level, index - 1)?;
        hash = node_hash(&left, &hash);
        level += 1;
        index >>= 1;
        out.push((level, index, hash));
    }
    Ok(out)
}

/// `MTH(D[0:size])`.
pub fn root<S: HashSource>(size: u64, source: &S) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(0, size, source, &mut Memo::default())
}

/// Hashes of incomplete subtrees (the tree's right edge) computed once per
/// request: every proof at one tree size shares them.
type Memo = std::collections::HashMap<(u64, u64), Hash>;

/// `MTH(D[start:start+len])` for `len > 0` and `start` a multiple of the
/// smallest power of two `>= len` (every range the RFC's recursions use).
fn range_hash<S: HashSource>(
    start: u64,
    len: u64,
    source: &S,
    memo: &mut Memo,
) -> Result<Hash, S::Error> {
    if len.is_power_of_two() {
        let level = len.trailing_zeros() as u8;
        return source.subtree(level, start >> level);
    }
    if let Some(h) = memo.get(&(start, len)) {
        return Ok(*h);
    }
    let k = split(len);
    let left = range_hash(start, k, source, memo)?;
    let right = range_hash(start + k, len - k, source, memo)?;
    let h = node_hash(&left, &right);
    memo.insert((start, len), h);
    Ok(h)
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// RFC 9162 §2.1.3.1 `PATH(index, D[0:size])`: the audit path of leaf
/// `index` in the tree of `size` leaves.
pub fn inclusion_proof<S: HashSource>(
    index: u64,
    size: u64,
    source: &S,
) -> Result<Result<Vec<Hash>, ProofError>, S::Error> {
    let mut out = inclusion_proofs(&[index], size, source)?;
    Ok(out
        .pop()
        .unwrap_or(Err(ProofError::IndexOutOfRange { index, size })))
}

/// [`inclusion_proof`] of several leaves of one tree, sharing the work on
/// the tree's right edge.
pub fn inclusion_proofs<S: HashSource>(
    indexes: &[u64],
    size: u64,
    source: &S,
) -> Result<Vec<Result<Vec<Hash>, ProofError>>, S::Error> {
    let mut memo = Memo::default();
    let mut all = Vec::with_capacity(indexes.len());
    for &index in indexes {
        if index >= size {
            all.push(Err(ProofError::IndexOutOfRange { index, size }));
            continue;
        }
        let mut proof = Vec::new();
        path(index, 0, size, source, &mut proof, &mut memo)?;
        all.push(Ok(proof));
    }
    Ok(all)
}

fn path<S: HashSource>(
    m: u64,
    start: u64,
    n: u64,
    source: &S,
    out: &mut Vec<Hash>,
    memo: &mut Memo,
) -> Result<(), S::Error> {
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(m, start, k, source, out, memo)?;
        out.push(range_hash(start + k, n - k, source, memo)?);
    } else {
        path(m - k, start + k, n - k, source, out, memo)?;
        out.push(range_hash(start, k, source, memo)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.1 `PROOF(first, D[0:second])`: proves the tree of
/// `first` leaves is a prefix of the tree of `second` leaves. Empty when
/// `first == second`; `0 < first <= second` is required.
pub fn consistency_proof<S: HashSource>(
    first: u64,
    second: u64,
    source: &S,
) -> Result<Result<Vec<Hash>, ProofError>, S::Error> {
    if first == 0 || first > second {
        return Ok(Err(ProofError::BadSizes { first, second }));
    }
    let mut proof = Vec::new();
    subproof(
        first,
        0,
        second,
        true,
        source,
        &mut proof,
        &mut Memo::default(),
    )?;
    Ok(Ok(proof))
}

fn subproof<S: HashSource>(
    m: u64,
    start: u64,
    n: u64,
    whole: bool,
    source: &S,
    out: &mut Vec<Hash>,
    memo: &mut Memo,
) -> Result<(), S::Error> {
    if m == n {
        if !whole {
            out.push(range_hash(start, n, source, memo)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, whole, source, out, memo)?;
        out.push(range_hash(start + k, n - k, source, memo)?);
    } else {
        subproof(m - k, start + k, n - k, false, source, out, memo)?;
        out.push(range_hash(start, k, source, memo)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf hash `leaf` at `index` in
/// the tree of `size` leaves with root `root`?
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// The length of `PATH(index, D[0:size])`.
fn inclusion_len(index: u64, size: u64) -> usize {
    // Levels where the path to the root has a sibling: the common prefix of
    // index and size-1 decides where the right edge is cut short.
    let last = size - 1;
    let inner = 64 - (index ^ last).leading_zeros() as usize;
    let border = (index >> inner).count_ones() as usize;
    inner + border
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `first` leaves with
/// root `first_root` is a prefix of the tree of `second` leaves with root
/// `second_root`? Equal sizes need equal roots and an empty proof.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() || proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want: consistency_len(first, second),
        });
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let want = consistency_len(first, second) + usize::from(first.is_power_of_two());
    if path.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want: want - usize::from(first.is_power_of_two()),
        });
    }
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if fr == *first_root && sr == *second_root && snode == 0 {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// The length of `PROOF(first, D[0:second])` for `0 < first < second`.
fn consistency_len(first: u64, second: u64) -> usize {
    // Count what `subproof` pushes, without hashing anything.
    fn count(m: u64, n: u64, whole: bool) -> usize {
        if m == n {
            return usize::from(!whole);
        }
        let k = split(n);
        if m <= k {
            count(m, k, whole) + 1
        } else {
            count(m - k, n - k, false) + 1
        }
    }
    count(first, second, true)
}

/// A whole tree in memory: for tests, tools and independent checks.
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    /// `levels[l][i]`: complete subtree hashes.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends one entry's bytes (hashed as a leaf).
    pub fn push(&mut self, data: &[u8]) {
        self.push_hash(leaf_hash(data));
    }

    /// Appends an already computed leaf hash.
    pub fn push_hash(&mut self, leaf: Hash) {
        let size = self.size();
        let Ok(new) = appended(size, leaf, self);
        for (level, index, hash) in new {
            let level = usize::from(level);
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, index);
            self.levels[level].push(hash);
        }
    }

    pub fn root(&self) -> Hash {
        let Ok(r) = root(self.size(), self);
        r
    }

    pub fn root_at(&self, size: u64) -> Hash {
        let Ok(r) = root(size.min(self.size()), self);
        r
    }
}

impl HashSource for MemoryTree {
    type Error = std::convert::Infallible;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[usize::from(level)][index as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The eight leaves of the Certificate Transparency reference tests.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// MTH(D[0:n]) for n = 1..8 (RFC 6962 reference values, as published
    /// with certificate-transparency-go's `merkle` verifier tests).
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference_tree() -> MemoryTree {
        let mut t = MemoryTree::new();
        for l in LEAVES {
            t.push(&hex::decode(l).unwrap());
        }
        t
    }

    /// The plain recursive definition, as an independent oracle.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn empty_tree_root() {
        assert_eq!(
            empty_root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(MemoryTree::new().root(), empty_root());
    }

    #[test]
    fn reference_roots() {
        let t = reference_tree();
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(t.root_at(n as u64 + 1), h(want), "size {}", n + 1);
        }
        assert_eq!(
            leaf_hash(&[0x00]),
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")
        );
    }

    /// (leaf index, tree size, path) from the reference tests.
    fn reference_inclusion() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                5,
                8,
                vec![
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                3,
                vec![h(
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                )],
            ),
            (
                1,
                5,
                vec![
                    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    /// (first, second, proof) from the reference tests.
    fn reference_consistency() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                5,
                vec![
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    #[test]
    fn reference_inclusion_proofs_are_made_and_verify() {
        let t = reference_tree();
        for (index, size, want) in reference_inclusion() {
            let Ok(got) = inclusion_proof(index, size, &t);
            assert_eq!(got.unwrap(), want, "PATH({index}, {size})");
            let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
            let root = t.root_at(size);
            verify_inclusion(index, size, &leaf, &want, &root).unwrap();
            // Wrong index, size, leaf, root or path: all refused.
            if size > 1 {
                assert!(verify_inclusion(index ^ 1, size, &leaf, &want, &root).is_err());
            }
            assert!(verify_inclusion(index, size * 2, &leaf, &want, &root).is_err());
            assert!(verify_inclusion(index, size, &[7; 32], &want, &root).is_err());
            assert!(verify_inclusion(index, size, &leaf, &want, &empty_root()).is_err());
            for i in 0..want.len() {
                let mut bad = want.clone();
                bad[i] = empty_root();
                assert!(verify_inclusion(index, size, &leaf, &bad, &root).is_err());
            }
            let mut longer = want.clone();
            longer.push(root);
            assert!(verify_inclusion(index, size, &leaf, &longer, &root).is_err());
            let mut front = vec![root];
            front.extend_from_slice(&want);
            assert!(verify_inclusion(index, size, &leaf, &front, &root).is_err());
            if !want.is_empty() {
                assert!(
                    verify_inclusion(index, size, &leaf, &want[..want.len() - 1], &root).is_err()
                );
            }
        }
    }

    #[test]
    fn reference_consistency_proofs_are_made_and_verify() {
        let t = reference_tree();
        for (first, second, want) in reference_consistency() {
            let Ok(got) = consistency_proof(first, second, &t);
            assert_eq!(got.unwrap(), want, "PROOF({first}, {second})");
            let (r1, r2) = (t.root_at(first), t.root_at(second));
            verify_consistency(first, second, &r1, &r2, &want).unwrap();
            if first != second {
                assert!(verify_consistency(first, second, &r2, &r2, &want).is_err());
                assert!(verify_consistency(first, second, &r1, &r1, &want).is_err());
                assert!(verify_consistency(first + 1, second, &r1, &r2, &want).is_err());
                assert!(verify_consistency(first, second * 2, &r1, &r2, &want).is_err());
                assert!(verify_consistency(first, second, &r1, &r2, &[]).is_err());
                for i in 0..want.len() {
                    let mut bad = want.clone();
                    bad[i] = empty_root();
                    assert!(verify_consistency(first, second, &r1, &r2, &bad).is_err());
                }
                let mut longer = want.clone();
                longer.push(r1);
                assert!(verify_consistency(first, second, &r1, &r2, &longer).is_err());
                assert!(
                    verify_consistency(first, second, &r1, &r2, &want[..want.len() - 1]).is_err()
                );
            }
        }
        // A shrinking tree and a size-0 start are refused outright.
        let r = t.root_at(4);
        assert!(matches!(
            verify_consistency(5, 4, &r, &r, &[]),
            Err(ProofError::BadSizes { .. })
        ));
        assert!(verify_consistency(0, 4, &r, &r, &[]).is_err());
        assert!(verify_consistency(3, 3, &r, &t.root_at(3), &[]).is_err());
    }

    /// Every proof for every pair in trees up to 40 leaves verifies, and the
    /// stored-subtree root equals the recursive definition.
    #[test]
    fn all_small_trees_agree_with_the_definition() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut t = MemoryTree::new();
        for (n, l) in leaves.iter().enumerate() {
            t.push_hash(*l);
            let size = n as u64 + 1;
            assert_eq!(t.root(), mth(&leaves[..=n]));
            for index in 0..size {
                let Ok(p) = inclusion_proof(index, size, &t);
                let p = p.unwrap();
                assert_eq!(p.len(), inclusion_len(index, size));
                verify_inclusion(index, size, &leaves[index as usize], &p, &t.root()).unwrap();
            }
            for first in 1..=size {
                let Ok(p) = consistency_proof(first, size, &t);
                let p = p.unwrap();
                verify_consistency(first, size, &t.root_at(first), &t.root(), &p).unwrap();
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn verifiers_never_panic(
            index in 0u64..100, size in 0u64..100, first in 0u64..100,
            proof in proptest::collection::vec(proptest::prelude::any::<[u8; 32]>(), 0..70),
        ) {
            let _ = verify_inclusion(index, size, &[0; 32], &proof, &[1; 32]);
            let _ = verify_consistency(first, size, &[0; 32], &[1; 32], &proof);
        }
    }
}
