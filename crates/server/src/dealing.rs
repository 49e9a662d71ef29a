//! Dealing the dedup OPRF key to the re-encryption nodes (`sesphrd
//! deal-oprf`, and `sesphrd dev` on first start).
//!
//! The dealer draws the key, splits it t-of-n (`sesphr_dedup::deal`),
//! writes share `i` to `DIR/srs-node-<i>.share` (0600, one file per node,
//! to be handed to that node only) and the public shares, which clients
//! check evaluations against, to `DIR/oprf-public.toml`. The key itself is
//! never written: after dealing, only t nodes together can evaluate it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sesphr_identity::NodeIndex;
use zeroize::Zeroizing;

/// The public half of a dealing: what `oprf-public.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dealing {
    /// How many shares evaluate the key.
    pub threshold: u8,
    /// One entry per node, in index order.
    pub srs_nodes: Vec<PublicShare>,
}

/// A node's public share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicShare {
    pub index: u8,
    /// Hex of the 33-byte SEC1 point `k_i·G`.
    pub oprf_public_share: String,
}

/// A dealing that could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DealingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot deal {threshold}-of-{nodes}: {message}")]
    Parameters {
        threshold: u8,
        nodes: u8,
        message: String,
    },
    #[error(
        "{dir} already holds a {had_t}-of-{had_n} dealing; it cannot become {threshold}-of-{nodes} \
         (grants and content keys depend on it): use the same numbers, or a new directory"
    )]
    Conflict {
        dir: PathBuf,
        had_t: u8,
        had_n: u8,
        threshold: u8,
        nodes: u8,
    },
}

impl Dealing {
    /// How many nodes were dealt to.
    pub fn nodes(&self) -> u8 {
        u8::try_from(self.srs_nodes.len()).unwrap_or(u8::MAX)
    }
}

/// The file holding node `index`'s share.
pub fn share_path(dir: &Path, index: NodeIndex) -> PathBuf {
    dir.join(format!("{}.share", index.name()))
}

/// The public shares' file.
pub fn public_path(dir: &Path) -> PathBuf {
    dir.join("oprf-public.toml")
}

/// The dealing in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<Dealing>, DealingError> {
    let path = public_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DealingError::Io { path, source }),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| DealingError::Invalid {
            path,
            message: e.to_string(),
        })
}

/// Deals `key` (a fresh random key if `None`) `threshold`-of-`nodes` into
/// `dir`, which must not hold a dealing yet.
pub fn deal(
    dir: &Path,
    threshold: u8,
    nodes: u8,
    key: Option<&sesphr_dedup::ServerKey>,
) -> Result<Dealing, DealingError> {
    if let Some(had) = load(dir)? {
        return Err(DealingError::Conflict {
            dir: dir.to_owned(),
            had_t: had.threshold,
            had_n: had.nodes(),
            threshold,
            nodes,
        });
    }
    let params = |message: String| DealingError::Parameters {
        threshold,
        nodes,
        message,
    };
    if nodes == 0 || nodes > sesphr_identity::MAX_NODES {
        return Err(params(format!(
            "a mesh has 1 to {} nodes",
            sesphr_identity::MAX_NODES
        )));
    }
    let fresh;
    let key = match key {
        Some(k) => k,
        None => {
            fresh = sesphr_dedup::ServerKey::random(&mut rand::rng());
            &fresh
        }
    };
    let shares = sesphr_dedup::deal(&mut rand::rng(), key, threshold, nodes)
        .map_err(|e| params(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| DealingError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut public = Vec::with_capacity(shares.len());
    for share in &shares {
        let index = NodeIndex::new(u32::from(share.index())).map_err(|e| params(e.to_string()))?;
        let path = share_path(dir, index);
        let mut text = Zeroizing::new(share.to_hex().to_string());
        text.push('\n');
        sesphr_mesh::pki::write_secret(&path, text.as_bytes()).map_err(|e| {
            DealingError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        public.push(PublicShare {
            index: share.index(),
            oprf_public_share: hex::encode(share.public_share()),
        });
    }
    let dealing = Dealing {
        threshold,
        srs_nodes: public,
    };
    // Written last: a dealing interrupted before this line is no dealing.
    let path = public_path(dir);
    let text = toml::to_string(&dealing).expect("a dealing serializes");
    sesphr_mesh::pki::write_public(&path, text.as_bytes()).map_err(|e| DealingError::Invalid {
        path,
        message: e.to_string(),
    })?;
    Ok(dealing)
}

/// The dealing in `dir`: the one there (which must be `threshold`-of-`nodes`
/// where those are given), or a new one: 2-of-3 by default, a majority of
/// `nodes` when only that is given.
pub fn ensure(
    dir: &Path,
    threshold: Option<u8>,
    nodes: Option<u8>,
) -> Result<Dealing, DealingError> {
    if let Some(had) = load(dir)? {
        let t = threshold.unwrap_or(had.threshold);
        let n = nodes.unwrap_or(had.nodes());
        if (t, n) != (had.threshold, had.nodes()) {
            return Err(DealingError::Conflict {
                dir: dir.to_owned(),
                had_t: had.threshold,
                had_n: had.nodes(),
                threshold: t,
                nodes: n,
            });
        }
        return Ok(had);
    }
    let n = nodes.unwrap_or(DEFAULT_NODES);
    let t = threshold.unwrap_or(if nodes.is_some() {
        n / 2 + 1
    } else {
        DEFAULT_THRESHOLD
    });
    deal(dir, t, n, None)
}

/// `sesphrd dev`'s default: three nodes, any two of which serve a read.
pub const DEFAULT_NODES: u8 = 3;
/// See [`DEFAULT_NODES`].
pub const DEFAULT_THRESHOLD: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dealing_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = ensure(dir.path(), None, None).unwrap();
        assert_eq!((d.threshold, d.nodes()), (2, 3));
        assert_eq!(ensure(dir.path(), None, None).unwrap(), d);
        assert_eq!(ensure(dir.path(), Some(2), Some(3)).unwrap(), d);
        let e = ensure(dir.path(), Some(1), Some(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already holds a 2-of-3 dealing"), "{e}");
        let i = NodeIndex::new(2).unwrap();
        let share = sesphr_dedup::KeyShare::from_hex(
            &std::fs::read_to_string(share_path(dir.path(), i)).unwrap(),
        )
        .unwrap();
        assert_eq!(share.index(), 2);
        assert_eq!(
            hex::encode(share.public_share()),
            d.srs_nodes[1].oprf_public_share
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(share_path(dir.path(), i))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (t, n) in [(0, 3), (4, 3), (1, 0), (1, 17)] {
            let e = deal(dir.path(), t, n, None).unwrap_err().to_string();
            assert!(e.starts_with(&format!("cannot deal {t}-of-{n}")), "{e}");
        }
        assert!(load(dir.path()).unwrap().is_none());
    }
}
