//! SeSPHR's transparency log, as in Certificate Transparency (RFC 9162) and
//! the C2SP `tlog-*` specifications: a Merkle tree over the audit entries
//! ([`merkle`]), tree heads signed by the log and cosigned by witnesses
//! ([`checkpoint`]), and the rule by which a client or witness that pinned
//! one checkpoint accepts a later one ([`check_advance`]).
//!
//! No I/O: the log stores its subtree hashes wherever it likes
//! ([`merkle::HashSource`]), clients and witnesses keep their pins where
//! they like. Everything here is specified byte for byte in
//! `docs/audit-log.md`.

pub mod checkpoint;
pub mod entry;
pub mod merkle;

pub use checkpoint::{
    Checkpoint, CheckpointError, Cosignature, Equivocation, PublicKey, SignedCheckpoint,
    SigningKey, verify_witnessed,
};
pub use merkle::{Hash, ProofError};

/// The checkpoint origin of a mesh's audit log: `<trust_domain>/audit`.
pub fn audit_origin(trust_domain: &str) -> String {
    format!("{trust_domain}/audit")
}

/// The default witness quorum for `witnesses` witnesses: a majority (0 for
/// none). Two majorities always share a witness, so no two disjoint groups
/// can each cosign another root at one size.
pub fn majority(witnesses: usize) -> usize {
    if witnesses == 0 { 0 } else { witnesses / 2 + 1 }
}

/// Why a checkpoint cannot follow the one pinned: the log was truncated,
/// rewritten or forked relative to what this verifier saw before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("the log's origin changed from {pinned} to {new}")]
    OriginChanged { pinned: String, new: String },
    #[error(
        "the log shrank from {pinned} to {new} entries (truncated or restored from an older copy)"
    )]
    Shrank { pinned: u64, new: u64 },
    #[error(
        "the log forked at size {size}: root {} was pinned, {} is shown now",
        hex::encode(.pinned_root), hex::encode(.new_root)
    )]
    Forked {
        size: u64,
        pinned_root: Hash,
        new_root: Hash,
    },
    #[error(
        "the log at size {new} (root {}) does not extend the pinned size {pinned} (root {}): {why}",
        hex::encode(.new_root), hex::encode(.pinned_root)
    )]
    NotAnExtension {
        pinned: u64,
        pinned_root: Hash,
        new: u64,
        new_root: Hash,
        why: ProofError,
    },
}

/// Accepts `new` after `pinned` iff it is the same tree or `proof` proves
/// `pinned` a prefix of it (RFC 9162 §2.1.4.2). A pin of size 0 accepts any
/// checkpoint of the same origin.
pub fn check_advance(
    pinned: &Checkpoint,
    new: &Checkpoint,
    proof: &[Hash],
) -> Result<(), Inconsistency> {
    if pinned.origin != new.origin {
        return Err(Inconsistency::OriginChanged {
            pinned: pinned.origin.clone(),
            new: new.origin.clone(),
        });
    }
    if new.size < pinned.size {
        return Err(Inconsistency::Shrank {
            pinned: pinned.size,
            new: new.size,
        });
    }
    if pinned.size == 0 {
        return Ok(());
    }
    if new.size == pinned.size {
        if new.root != pinned.root {
            return Err(Inconsistency::Forked {
                size: new.size,
                pinned_root: pinned.root,
                new_root: new.root,
            });
        }
        return Ok(());
    }
    merkle::verify_consistency(pinned.size, new.size, &pinned.root, &new.root, proof).map_err(
        |why| Inconsistency::NotAnExtension {
            pinned: pinned.size,
            pinned_root: pinned.root,
            new: new.size,
            new_root: new.root,
            why,
        },
    )
}

/// Witnesses that cosigned both `a` and `b`, two checkpoints of one size
/// with different roots: each is an [`Equivocation`]. Only cosignatures
/// that verify under the witness's key count as evidence.
pub fn equivocations(
    a: (&Checkpoint, &[Cosignature]),
    b: (&Checkpoint, &[Cosignature]),
    witnesses: &[(String, PublicKey)],
) -> Vec<Equivocation> {
    let (ca, sa) = a;
    let (cb, sb) = b;
    if ca.size != cb.size || ca.root == cb.root || ca.origin != cb.origin {
        return Vec::new();
    }
    let valid = |cp: &Checkpoint, c: &Cosignature| {
        witnesses
            .iter()
            .find(|(n, _)| *n == c.witness)
            .is_some_and(|(_, k)| k.verify_cosignature(cp, c).is_ok())
    };
    let mut out: Vec<Equivocation> = Vec::new();
    for x in sa.iter().filter(|c| valid(ca, c)) {
        if out.iter().any(|e| e.witness == x.witness) {
            continue;
        }
        if sb.iter().any(|y| y.witness == x.witness && valid(cb, y)) {
            out.push(Equivocation {
                witness: x.witness.clone(),
                size: ca.size,
                first: ca.root,
                second: cb.root,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use merkle::MemoryTree;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn head(t: &MemoryTree, size: u64) -> Checkpoint {
        Checkpoint {
            origin: "o".into(),
            size,
            root: t.root_at(size),
            time: 0,
        }
    }

    #[test]
    fn advance_accepts_extensions_and_names_every_kind_of_tampering() {
        let mut t = MemoryTree::new();
        for i in 0u8..10 {
            t.push(&[i]);
        }
        let proof = |a, b| {
            let Ok(p) = merkle::consistency_proof(a, b, &t);
            p.unwrap()
        };
        check_advance(&head(&t, 4), &head(&t, 10), &proof(4, 10)).unwrap();
        check_advance(&head(&t, 10), &head(&t, 10), &[]).unwrap();
        check_advance(&head(&t, 0), &head(&t, 3), &[]).unwrap();
        // (a) dropped entries: a shorter tree.
        assert!(matches!(
            check_advance(&head(&t, 10), &head(&t, 7), &[]),
            Err(Inconsistency::Shrank { pinned: 10, new: 7 })
        ));
        // (b)/(c) rewritten history: same or larger size, another tree.
        let mut other = MemoryTree::new();
        for i in 0u8..12 {
            other.push(&[if i == 2 { 99 } else { i }]);
        }
        let Ok(p) = merkle::consistency_proof(4, 12, &other);
        let e = check_advance(&head(&t, 4), &head(&other, 12), &p.unwrap()).unwrap_err();
        assert!(
            matches!(
                e,
                Inconsistency::NotAnExtension {
                    pinned: 4,
                    new: 12,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            check_advance(&head(&t, 10), &head(&other, 10), &[]),
            Err(Inconsistency::Forked { size: 10, .. })
        ));
        let mut renamed = head(&t, 10);
        renamed.origin = "p".into();
        assert!(check_advance(&head(&t, 4), &renamed, &proof(4, 10)).is_err());
    }

    #[test]
    fn a_witness_cosigning_two_roots_at_one_size_is_caught() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let w = SigningKey::generate(&mut rng);
        let honest = SigningKey::generate(&mut rng);
        let ws = vec![
            ("w".to_owned(), w.public_key()),
            ("h".to_owned(), honest.public_key()),
        ];
        let a = Checkpoint {
            origin: "o".into(),
            size: 5,
            root: [1; 32],
            time: 0,
        };
        let b = Checkpoint {
            root: [2; 32],
            ..a.clone()
        };
        let sa = [w.cosign("w", 1, &a), honest.cosign("h", 1, &a)];
        let sb = [w.cosign("w", 2, &b)];
        let found = equivocations((&a, &sa), (&b, &sb), &ws);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].witness, "w");
        assert!(
            found[0]
                .to_string()
                .contains("two different roots at size 5")
        );
        // A forged cosignature is no evidence against a witness.
        let forged = [honest.cosign("w", 2, &b)];
        assert!(equivocations((&a, &sa), (&b, &forged), &ws).is_empty());
    }
}
