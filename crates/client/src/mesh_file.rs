//! The mesh file: where a client finds the mesh.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sesphr_identity::NodeIndex;

use crate::deadline::{TimeoutSettings, Timeouts};

/// A mesh file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MeshFileError {
    /// The mesh file.
    pub path: String,
    /// Why it was refused.
    pub reason: String,
}

/// What a client needs to reach a mesh: written by `sesphrd dev` as
/// `DIR/mesh.toml`, read by `sesphr --mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The SPIFFE trust domain of the mesh's identities.
    pub trust_domain: String,
    /// PEM file of the mesh CA.
    pub ca: PathBuf,
    /// CloudStorage's URL (`https://host:port`).
    pub cloud_storage: String,
    /// The SRS setup service's URL (enrolment, the user directory).
    pub srs: String,
    /// AccessPolicy's URL.
    pub access_policy: String,
    /// How many re-encryption nodes a read needs: grants are made t-of-n
    /// over [`srs_nodes`](Self::srs_nodes), and content keys need t nodes'
    /// OPRF shares.
    #[serde(default)]
    pub threshold: u8,
    /// `[[srs_nodes]]`: every re-encryption node of the mesh.
    #[serde(default)]
    pub srs_nodes: Vec<NodeEntry>,
    /// `[timeouts]`: the client's deadlines, in milliseconds (see
    /// [`Timeouts`]); absent keys keep their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutSettings>,
    /// `[audit]`: the audit log's key and witnesses, with which the client
    /// checks the log itself (see [`AuditLogKeys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSection>,
}

/// `[audit]` of a mesh file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The checkpoints' origin line; absent: `<trust_domain>/audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The log's public key (hex, 33-byte SEC1 compressed point).
    pub log_key: String,
    /// How many listed witnesses must have cosigned a checkpoint before the
    /// client accepts it; absent: a majority of them. 0: none (the client's
    /// own pin still catches a log that changes under it, but not one shown
    /// differently to others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_quorum: Option<usize>,
    /// `[[audit.witnesses]]`.
    #[serde(default)]
    pub witnesses: Vec<WitnessEntry>,
}

/// One witness of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEntry {
    /// Its name in cosignatures: `srs-node-<i>` or `cloud-storage`.
    pub name: String,
    /// Its public key (hex, 33-byte SEC1 compressed point).
    pub key: String,
}

/// `[audit]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLogKeys {
    /// The checkpoints' origin line.
    pub origin: String,
    /// The key that signs checkpoints.
    pub log_key: sesphr_tlog::PublicKey,
    /// Witness names and keys.
    pub witnesses: Vec<(String, sesphr_tlog::PublicKey)>,
    /// Cosignatures required.
    pub quorum: usize,
}

/// One re-encryption node, as a client addresses and checks it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Its index `i` (its certificate must name
    /// `spiffe://<td>/service/srs-node/<i>`).
    pub index: u8,
    /// `https://host:port`.
    pub url: String,
    /// Its public share of the dedup OPRF key (hex, 33-byte SEC1 point):
    /// its evaluations are checked against it.
    pub oprf_public_share: String,
}

/// A node of the mesh file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its index; its certificate must name it.
    pub index: NodeIndex,
    /// `https://host:port`.
    pub url: String,
    /// Its public OPRF key share (SEC1 compressed).
    pub oprf_public_share: [u8; 33],
}

impl MeshFile {
    /// The re-encryption nodes and the threshold, checked: 1 ≤ t ≤ n,
    /// distinct indices, well-formed public shares that all belong to one
    /// dealing (any t of them give the same key).
    pub fn nodes(&self) -> Result<(u8, Vec<Node>), String> {
        if self.srs_nodes.is_empty() {
            return Err(
                "lists no [[srs_nodes]] (re-encryption nodes): a mesh file from a \
                        single-SRS mesh; see `sesphrd migrate-srs`, or restart `sesphrd dev`"
                    .into(),
            );
        }
        let n = self.srs_nodes.len();
        if self.threshold == 0 || usize::from(self.threshold) > n {
            return Err(format!(
                "threshold {} must be 1 to the number of srs_nodes ({n})",
                self.threshold
            ));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        for entry in &self.srs_nodes {
            let index = NodeIndex::new(u32::from(entry.index)).map_err(|e| e.to_string())?;
            if nodes.iter().any(|m| m.index == index) {
                return Err(format!("srs node {index} is listed twice"));
            }
            if !entry.url.starts_with("https://") {
                return Err(format!(
                    "srs node {index}: url {:?} must start with https://",
                    entry.url
                ));
            }
            let share: [u8; 33] = hex::decode(entry.oprf_public_share.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    format!("srs node {index}: oprf_public_share is not 66 hex digits")
                })?;
            nodes.push(Node {
                index,
                url: entry.url.clone(),
                oprf_public_share: share,
            });
        }
        // Shares are dealt to nodes 1..=n, and kfrag shares made for them.
        let mut indices: Vec<u8> = nodes.iter().map(|m| m.index.get()).collect();
        indices.sort_unstable();
        if indices.iter().zip(1u8..).any(|(i, want)| *i != want) {
            return Err(format!(
                "srs_nodes must be numbered 1 to {n}, each once (they are {indices:?})"
            ));
        }
        let t = self.threshold;
        let shares: Vec<(u8, [u8; 33])> = nodes
            .iter()
            .map(|m| (m.index.get(), m.oprf_public_share))
            .collect();
        let first = sesphr_dedup::combine_public_shares(t, &shares[..usize::from(t)]);
        let last = sesphr_dedup::combine_public_shares(t, &shares[n - usize::from(t)..]);
        match (first, last) {
            (Ok(a), Ok(b)) if a == b => Ok((t, nodes)),
            _ => Err(format!(
                "the srs_nodes' OPRF public shares are not one {t}-of-{n} dealing"
            )),
        }
    }

    /// Reads and parses the mesh file at `path`.
    pub fn load(path: &Path) -> Result<Self, MeshFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| MeshFileError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut mesh: MeshFile = toml::from_str(&text).map_err(|e| MeshFileError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let audit_ok = |m: &MeshFile| match m.audit {
            Some(_) => m.audit_log().map(drop),
            None => Ok(()),
        };
        if let Err(reason) = mesh
            .timeouts()
            .and_then(|_| mesh.nodes().map(drop))
            .and_then(|_| audit_ok(&mesh))
        {
            return Err(MeshFileError {
                path: path.display().to_string(),
                reason,
            });
        }
        // A relative CA path is relative to the mesh file.
        if mesh.ca.is_relative()
            && let Some(dir) = path.parent()
        {
            mesh.ca = dir.join(&mesh.ca);
        }
        Ok(mesh)
    }
}

impl MeshFile {
    /// The audit log's keys: distinct witness names, valid keys, a quorum
    /// no larger than the witnesses listed.
    pub fn audit_log(&self) -> Result<AuditLogKeys, String> {
        let a = self.audit.as_ref().ok_or_else(|| {
            "has no [audit] section: the client cannot check the audit log without the \
             log's key (restart `sesphrd dev`, or ask the operator for a current mesh file)"
                .to_owned()
        })?;
        let log_key = sesphr_tlog::PublicKey::from_hex(&a.log_key)
            .map_err(|e| format!("audit.log_key: {e}"))?;
        let mut witnesses: Vec<(String, sesphr_tlog::PublicKey)> = Vec::new();
        for w in &a.witnesses {
            if witnesses.iter().any(|(n, _)| *n == w.name) {
                return Err(format!("audit witness {:?} is listed twice", w.name));
            }
            let key = sesphr_tlog::PublicKey::from_hex(&w.key)
                .map_err(|e| format!("audit witness {:?}: {e}", w.name))?;
            // One key under two names would count one witness twice.
            if let Some((other, _)) = witnesses.iter().find(|(_, k)| *k == key) {
                return Err(format!(
                    "audit witnesses {other:?} and {:?} have the same key",
                    w.name
                ));
            }
            if key == log_key {
                return Err(format!(
                    "audit witness {:?} has the log's own key: it would vouch for itself",
                    w.name
                ));
            }
            witnesses.push((w.name.clone(), key));
        }
        let quorum = a
            .witness_quorum
            .unwrap_or(sesphr_tlog::majority(witnesses.len()));
        if quorum > witnesses.len() {
            return Err(format!(
                "audit.witness_quorum {quorum} is more than the {} witnesses listed",
                witnesses.len()
            ));
        }
        // Two disjoint minorities could each cosign another root at one
        // size, and no client would see both: a quorum is a majority, or 0
        // (the explicit choice of no witness protection).
        if quorum != 0 && quorum < sesphr_tlog::majority(witnesses.len()) {
            return Err(format!(
                "audit.witness_quorum {quorum} is not a majority of the {} witnesses (at least {}; \
                 0 turns witness checks off)",
                witnesses.len(),
                sesphr_tlog::majority(witnesses.len())
            ));
        }
        let origin = a
            .origin
            .clone()
            .unwrap_or_else(|| sesphr_tlog::audit_origin(&self.trust_domain));
        if origin.is_empty() {
            return Err("audit.origin is empty".into());
        }
        Ok(AuditLogKeys {
            origin,
            log_key,
            witnesses,
            quorum,
        })
    }

    /// The client's deadlines: the defaults, changed by `[timeouts]`.
    pub fn timeouts(&self) -> Result<Timeouts, String> {
        self.timeouts.clone().unwrap_or_default().resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        // Distinct valid points: multiples of the generator.
        let mut scalar = [0u8; 32];
        scalar[31] = byte;
        sesphr_tlog::SigningKey::from_hex(&hex::encode(scalar))
            .unwrap()
            .public_key()
            .to_hex()
    }

    fn mesh(audit: AuditSection) -> MeshFile {
        MeshFile {
            trust_domain: "td.example".into(),
            ca: PathBuf::from("ca.pem"),
            cloud_storage: String::new(),
            srs: String::new(),
            access_policy: String::new(),
            threshold: 0,
            srs_nodes: Vec::new(),
            timeouts: None,
            audit: Some(audit),
        }
    }

    fn section(witnesses: &[(&str, u8)], quorum: Option<usize>) -> AuditSection {
        AuditSection {
            origin: None,
            log_key: key(1),
            witness_quorum: quorum,
            witnesses: witnesses
                .iter()
                .map(|(n, k)| WitnessEntry {
                    name: (*n).into(),
                    key: key(*k),
                })
                .collect(),
        }
    }

    #[test]
    fn audit_defaults_to_a_majority_and_the_trust_domains_origin() {
        let keys = mesh(section(&[("a", 2), ("b", 3), ("c", 4), ("d", 5)], None))
            .audit_log()
            .unwrap();
        assert_eq!(keys.quorum, 3);
        assert_eq!(keys.origin, "td.example/audit");
        assert_eq!(mesh(section(&[], None)).audit_log().unwrap().quorum, 0);
        assert_eq!(
            mesh(section(&[("a", 2)], Some(0)))
                .audit_log()
                .unwrap()
                .quorum,
            0
        );
    }

    #[test]
    fn audit_witnesses_must_be_distinct_and_enough() {
        let refused = |s: AuditSection| mesh(s).audit_log().unwrap_err();
        assert!(refused(section(&[("a", 2), ("a", 3)], None)).contains("listed twice"));
        assert!(refused(section(&[("a", 2), ("b", 2)], None)).contains("same key"));
        assert!(refused(section(&[("a", 1)], None)).contains("log's own key"));
        assert!(refused(section(&[("a", 2)], Some(2))).contains("more than the 1"));
        let four = [("a", 2), ("b", 3), ("c", 4), ("d", 5)];
        assert!(refused(section(&four, Some(2))).contains("not a majority"));
        assert_eq!(mesh(section(&four, Some(0))).audit_log().unwrap().quorum, 0);
        let mut bad = section(&[], None);
        bad.log_key = "02".repeat(3);
        assert!(refused(bad).contains("audit.log_key"));
        assert!(
            MeshFile {
                audit: None,
                ..mesh(section(&[], None))
            }
            .audit_log()
            .unwrap_err()
            .contains("no [audit] section")
        );
    }
}
