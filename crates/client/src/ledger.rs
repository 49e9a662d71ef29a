//! The owner's own record of the grants she made and revoked
//! (`DIR/grants.toml`).
//!
//! AccessPolicy is at most semi-trusted: one that acknowledges a `Revoke`
//! without recording it, or lists a grant nobody made, must not decide who
//! receives kfrags for a new key epoch. So the client keeps its own ledger:
//! a grant is entered once AccessPolicy acknowledged exactly what was asked;
//! a revocation is entered *before* AccessPolicy is asked, so that a lying
//! or failing server cannot keep a revoked grantee in the next rotation.
//! `rotate` issues kfrags only to grantees active in the ledger, and
//! [`compare`] shows where the server's list and the ledger disagree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sesphr_identity::Role;

use crate::{ClientError, Grant};
use sesphr_mesh::pki::write_public;

/// One grantee's entry in one partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// The grantee's role when the grant was made.
    pub role: String,
    /// First key epoch granted.
    pub epoch_min: u32,
    /// Records created before this time stay closed (0: none).
    pub not_before: i64,
    /// When the grant ends (Unix seconds), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// When the owner made the grant (local clock).
    pub granted_at: i64,
    /// When the owner revoked it (local clock); `None`: active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

impl LedgerEntry {
    /// The entry of `grant`, active, entered at `now`.
    fn granted(grant: &Grant, now: i64) -> Self {
        Self {
            role: grant.grantee_role.as_str().to_owned(),
            epoch_min: grant.epoch_min,
            not_before: grant.not_before,
            expires_at: grant.expires_at,
            granted_at: now,
            revoked_at: None,
        }
    }

    /// Whether the grant is neither revoked nor expired at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// partition → grantee → entry.
type Entries = BTreeMap<String, BTreeMap<String, LedgerEntry>>;

/// The profile's grant ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub(crate) fn new(home: &Path) -> Self {
        Self {
            path: home.join("grants.toml"),
        }
    }

    /// Writes an empty ledger (at enrollment).
    pub(crate) fn create(home: &Path) -> Result<(), ClientError> {
        Self::new(home).save(&Entries::new())
    }

    pub(crate) fn load(&self) -> Result<Entries, ClientError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClientError::Profile(format!(
                    "{} is missing: this profile has no grant ledger, so it cannot tell \
                     who may receive kfrags; check `sesphr grants`, then adopt that list \
                     with `sesphr grants --adopt`",
                    self.path.display()
                ))
            } else {
                ClientError::io(&self.path, e)
            }
        })?;
        toml::from_str(&text)
            .map_err(|e| ClientError::Profile(format!("{}: {e}", self.path.display())))
    }

    /// Starts a ledger from `given` (the grants AccessPolicy lists), for a
    /// profile that has none. Refuses to overwrite an existing ledger.
    pub(crate) fn adopt(&self, given: &[Grant], now: i64) -> Result<usize, ClientError> {
        if self.path.exists() {
            return Err(ClientError::Invalid(format!(
                "{} already exists; a ledger is only adopted once",
                self.path.display()
            )));
        }
        let mut all = Entries::new();
        for g in given {
            insert(&mut all, g, now);
        }
        self.save(&all)?;
        Ok(given.len())
    }

    fn save(&self, all: &Entries) -> Result<(), ClientError> {
        let text = toml::to_string(all).expect("ledger serializes");
        write_public(&self.path, text.as_bytes())?;
        Ok(())
    }

    /// Enters an acknowledged grant (replacing an earlier entry).
    pub(crate) fn record_grant(&self, grant: &Grant, now: i64) -> Result<(), ClientError> {
        let mut all = self.load()?;
        insert(&mut all, grant, now);
        self.save(&all)
    }

    /// Marks `grantee`'s grant of `partition` revoked. Also for a grantee
    /// the ledger never saw (revoking what a server claims exists).
    pub(crate) fn record_revoke(
        &self,
        partition: &str,
        grantee: &str,
        now: i64,
    ) -> Result<(), ClientError> {
        let mut all = self.load()?;
        let entry = all
            .entry(partition.to_owned())
            .or_default()
            .entry(grantee.to_owned())
            .or_insert_with(|| LedgerEntry {
                role: String::new(),
                epoch_min: 0,
                not_before: 0,
                expires_at: None,
                granted_at: 0,
                revoked_at: None,
            });
        entry.revoked_at = Some(now);
        self.save(&all)
    }

    /// Grantees of `partition` active at `now`.
    pub(crate) fn active(&self, partition: &str, now: i64) -> Result<Vec<String>, ClientError> {
        Ok(self
            .load()?
            .remove(partition)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, e)| e.is_active(now))
            .map(|(g, _)| g)
            .collect())
    }
}

/// Enters `grant` as active (replacing an earlier entry of its grantee).
fn insert(all: &mut Entries, grant: &Grant, now: i64) {
    all.entry(grant.partition.to_string()).or_default().insert(
        grant.grantee_id.to_string(),
        LedgerEntry::granted(grant, now),
    );
}

/// Where AccessPolicy's list of an owner's grants and her ledger disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disagreement {
    /// The ledger has an active grant AccessPolicy does not list.
    MissingAtServer {
        /// Partition.
        partition: String,
        /// Grantee.
        grantee_id: String,
    },
    /// AccessPolicy lists a grant the owner never made.
    NotInLedger {
        /// Partition.
        partition: String,
        /// Grantee.
        grantee_id: String,
        /// Role the server lists.
        role: Role,
    },
    /// AccessPolicy still lists a grant the owner revoked.
    RevokedButListed {
        /// Partition.
        partition: String,
        /// Grantee.
        grantee_id: String,
    },
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingAtServer {
                partition,
                grantee_id,
            } => write!(
                f,
                "{partition} → {grantee_id}: granted by you, but AccessPolicy does not list it"
            ),
            Self::NotInLedger {
                partition,
                grantee_id,
                role,
            } => write!(
                f,
                "{partition} → {grantee_id} ({role}): listed by AccessPolicy, but you never granted it"
            ),
            Self::RevokedButListed {
                partition,
                grantee_id,
            } => write!(
                f,
                "{partition} → {grantee_id}: revoked by you, but AccessPolicy still lists it"
            ),
        }
    }
}

/// Compares the grants AccessPolicy lists as given by the owner with her
/// ledger at `now`.
pub(crate) fn compare(ledger: &Entries, given: &[Grant], now: i64) -> Vec<Disagreement> {
    let mut out = Vec::new();
    let listed = |p: &str, g: &str| {
        given
            .iter()
            .any(|x| x.partition.as_str() == p && x.grantee_id.as_str() == g)
    };
    for g in given {
        match ledger
            .get(g.partition.as_str())
            .and_then(|m| m.get(g.grantee_id.as_str()))
        {
            None => out.push(Disagreement::NotInLedger {
                partition: g.partition.to_string(),
                grantee_id: g.grantee_id.to_string(),
                role: g.grantee_role,
            }),
            Some(e) if e.revoked_at.is_some() => out.push(Disagreement::RevokedButListed {
                partition: g.partition.to_string(),
                grantee_id: g.grantee_id.to_string(),
            }),
            Some(_) => {}
        }
    }
    for (partition, grantees) in ledger {
        for (grantee, e) in grantees {
            if e.is_active(now) && !listed(partition, grantee) {
                out.push(Disagreement::MissingAtServer {
                    partition: partition.clone(),
                    grantee_id: grantee.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesphr_identity::{PartitionName, UserId};

    fn grant(p: &str, g: &str) -> Grant {
        Grant {
            owner_id: UserId::parse("alice".to_owned()).unwrap(),
            partition: PartitionName::parse(p.to_owned()).unwrap(),
            grantee_id: UserId::parse(g.to_owned()).unwrap(),
            grantee_role: Role::Doctor,
            epoch_min: 0,
            epoch_max: None,
            not_before: 0,
            expires_at: None,
            granted_at: 5,
        }
    }

    #[test]
    fn revocations_hold_whatever_the_server_lists() {
        let dir = tempfile::tempdir().unwrap();
        Ledger::create(dir.path()).unwrap();
        let l = Ledger::new(dir.path());
        l.record_grant(&grant("medical", "bob"), 10).unwrap();
        l.record_grant(&grant("medical", "carol"), 10).unwrap();
        assert_eq!(l.active("medical", 11).unwrap(), ["bob", "carol"]);
        l.record_revoke("medical", "bob", 12).unwrap();
        assert_eq!(l.active("medical", 13).unwrap(), ["carol"]);
        // A server that ignored the revoke and invented mallory.
        let server = [
            grant("medical", "bob"),
            grant("medical", "mallory"),
            grant("medical", "carol"),
        ];
        let d = compare(&l.load().unwrap(), &server, 14);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.contains(&Disagreement::RevokedButListed {
            partition: "medical".into(),
            grantee_id: "bob".into()
        }));
        assert!(
            matches!(&d[1], Disagreement::NotInLedger { grantee_id, .. } if grantee_id == "mallory")
        );
        // A server that dropped carol's grant.
        let d = compare(&l.load().unwrap(), &[], 14);
        assert_eq!(
            d,
            [Disagreement::MissingAtServer {
                partition: "medical".into(),
                grantee_id: "carol".into()
            }]
        );
    }

    #[test]
    fn a_profile_without_a_ledger_says_so_and_can_adopt_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let err = l.active("medical", 0).unwrap_err();
        assert!(err.to_string().contains("grants --adopt"), "{err}");
        assert_eq!(l.adopt(&[grant("medical", "bob")], 1).unwrap(), 1);
        assert_eq!(l.active("medical", 2).unwrap(), ["bob"]);
        assert!(
            l.adopt(&[], 3).is_err(),
            "an existing ledger is never replaced"
        );
        assert_eq!(l.active("medical", 2).unwrap(), ["bob"]);
    }
}
