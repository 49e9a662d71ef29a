//! Per-store secrets (the dedup OPRF key seed, the page-token MAC key): one
//! random value per name, made on first use and kept for good.
//!
//! A secret lives in the store's own sled database (tree `secrets`), so it
//! shares the store's durability, backups and file permissions, and a
//! restart sees the value every earlier answer was made with.

use zeroize::Zeroizing;

use crate::DomainError;

/// The length of every store secret.
pub const SECRET_LEN: usize = 32;

/// The sled tree secrets are kept in.
const TREE: &str = "secrets";

/// The secret stored under `key` in `db`, drawn from the OS RNG the first
/// time it is asked for.
///
/// Creation is one compare-and-swap, so concurrent first calls all return
/// the one value that won; the database is flushed (fsync) before a new
/// secret is returned, so nothing is ever derived from a secret a crash
/// could lose. Copies made here are zeroized; the value is never logged.
pub fn load_or_create(
    db: &sled::Db,
    key: &str,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, DomainError> {
    let secrets = db.open_tree(TREE)?;
    let mut fresh = Zeroizing::new([0u8; SECRET_LEN]);
    rand::fill(&mut fresh[..]);
    match secrets.compare_and_swap(key.as_bytes(), None::<&[u8]>, Some(&fresh[..]))? {
        Ok(()) => {
            db.flush()?;
            Ok(fresh)
        }
        Err(taken) => {
            let mut stored = Zeroizing::new([0u8; SECRET_LEN]);
            match taken.current {
                Some(v) if v.len() == SECRET_LEN => stored.copy_from_slice(&v),
                _ => {
                    return Err(DomainError::Corrupt(format!(
                        "secret {key} is not {SECRET_LEN} bytes"
                    )));
                }
            }
            Ok(stored)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_kept_across_reopen_and_separate_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let a = load_or_create(&db, "oprf").unwrap();
            assert_eq!(*load_or_create(&db, "oprf").unwrap(), *a);
            assert_ne!(*load_or_create(&db, "other").unwrap(), *a);
            *a
        };
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        assert_eq!(*load_or_create(&db, "oprf").unwrap(), first);
    }

    #[test]
    fn a_damaged_secret_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree(TREE)
            .unwrap()
            .insert("short", &[1u8; 5][..])
            .unwrap();
        let e = load_or_create(&db, "short").unwrap_err();
        assert!(matches!(e, DomainError::Corrupt(_)), "{e:?}");
        assert_eq!(
            db.open_tree(TREE).unwrap().get("short").unwrap().unwrap(),
            [1u8; 5][..]
        );
    }

    #[test]
    fn concurrent_first_calls_agree() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let seen: Vec<[u8; SECRET_LEN]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| *load_or_create(&db, "race").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
    }
}
