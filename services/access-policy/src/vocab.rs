//! The audit log's vocabulary: what was done ([`AuditAction`]) and how it
//! ended ([`Outcome`]).
//!
//! Entries are hash-chained over the exact text of these fields, so each
//! variant's text is fixed forever: `as_str` gives the bytes every existing
//! log was written with, and `FromStr` accepts exactly those texts. Stored
//! entries keep their text (an old log must verify whatever it holds); only
//! new events are typed, and events other services send are parsed at the
//! boundary, so an unknown word never enters the log.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use sesphr::rpc::Rpc;

use crate::{Action, DomainError, truncate};

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A patient granted access (`grant`).
    Grant,
    /// A patient revoked a grant (`revoke`).
    Revoke,
    /// An access check by a service (`check:read`, `check:reencrypt`,
    /// `check:list`).
    Check(Action),
    /// Someone listed audit entries (`list_audit`).
    AuditListing,
    /// A served call of an RPC, named by the RPC table
    /// ([`Rpc::audit_action`]).
    Served(Rpc),
    /// A refused call of an RPC (`denied:<rpc>`).
    Denied(Rpc),
    /// A coalesced entry merging many actions (`*`).
    Various,
}

const CHECK_PREFIX: &str = "check:";
const DENIED_PREFIX: &str = "denied:";

impl AuditAction {
    /// The text stored and hashed for this action.
    pub fn as_str(&self) -> Cow<'static, str> {
        match self {
            AuditAction::Grant => Cow::Borrowed("grant"),
            AuditAction::Revoke => Cow::Borrowed("revoke"),
            AuditAction::Check(a) => Cow::Owned(format!("{CHECK_PREFIX}{a}")),
            AuditAction::AuditListing => Cow::Borrowed("list_audit"),
            AuditAction::Served(rpc) => Cow::Borrowed(rpc.audit_action()),
            AuditAction::Denied(rpc) => {
                Cow::Owned(format!("{DENIED_PREFIX}{}", rpc.audit_action()))
            }
            AuditAction::Various => Cow::Borrowed("*"),
        }
    }

    /// The action of a refusal of the RPC whose table row is named `name`.
    pub fn denied_rpc(name: &str) -> Option<AuditAction> {
        rpc_named(name).map(AuditAction::Denied)
    }
}

fn rpc_named(name: &str) -> Option<Rpc> {
    Rpc::ALL.into_iter().find(|rpc| rpc.audit_action() == name)
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = match s {
            "grant" => Some(AuditAction::Grant),
            "revoke" => Some(AuditAction::Revoke),
            "list_audit" => Some(AuditAction::AuditListing),
            "*" => Some(AuditAction::Various),
            _ => {
                if let Some(action) = s.strip_prefix(CHECK_PREFIX) {
                    action.parse().ok().map(AuditAction::Check)
                } else if let Some(rpc) = s.strip_prefix(DENIED_PREFIX) {
                    AuditAction::denied_rpc(rpc)
                } else {
                    rpc_named(s).map(AuditAction::Served)
                }
            }
        };
        parsed.ok_or_else(|| {
            DomainError::Malformed(format!(
                "unknown audit action {:?}: expected grant, revoke, list_audit, *, \
                 check:<read|reencrypt|list>, an RPC name or denied:<RPC name>",
                truncate(s)
            ))
        })
    }
}

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done (`ok`).
    Ok,
    /// A check that allowed access (`allowed`).
    Allowed,
    /// A refusal (`denied`).
    Denied,
    /// An existence check or evaluation, cheap to repeat (`probe`).
    Probe,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::Probe,
    ];

    /// The text stored and hashed for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Probe => "probe",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                DomainError::Malformed(format!(
                    "unknown audit outcome {:?}: expected ok, allowed, denied or probe",
                    truncate(s)
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_action() -> Vec<AuditAction> {
        let mut all = vec![
            AuditAction::Grant,
            AuditAction::Revoke,
            AuditAction::AuditListing,
            AuditAction::Various,
        ];
        all.extend(Action::ALL.map(AuditAction::Check));
        all.extend(Rpc::ALL.map(AuditAction::Served));
        all.extend(Rpc::ALL.map(AuditAction::Denied));
        all
    }

    #[test]
    fn texts_are_the_ones_old_logs_hold() {
        // Pinned: these bytes are in every hash chain written so far.
        let pinned = [
            (AuditAction::Grant, "grant"),
            (AuditAction::Revoke, "revoke"),
            (AuditAction::Check(Action::Read), "check:read"),
            (AuditAction::Check(Action::ReEncrypt), "check:reencrypt"),
            (AuditAction::Check(Action::List), "check:list"),
            (AuditAction::AuditListing, "list_audit"),
            (AuditAction::Various, "*"),
            (
                AuditAction::Served(Rpc::QueryBlob),
                "sesphr.v1.CloudStorage/QueryBlob",
            ),
            (
                AuditAction::Denied(Rpc::GetRecord),
                "denied:sesphr.v1.CloudStorage/GetRecord",
            ),
            (
                AuditAction::Denied(Rpc::Health),
                "denied:grpc.health.v1.Health",
            ),
        ];
        for (action, text) in pinned {
            assert_eq!(action.as_str(), text);
        }
        let outcomes = Outcome::ALL.map(Outcome::as_str);
        assert_eq!(outcomes, ["ok", "allowed", "denied", "probe"]);
    }

    #[test]
    fn every_word_round_trips_and_is_unique() {
        let all = every_action();
        let mut texts: Vec<_> = all.iter().map(|a| a.as_str().into_owned()).collect();
        for (action, text) in all.iter().zip(&texts) {
            assert_eq!(text.parse::<AuditAction>().unwrap(), *action, "{text}");
        }
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), all.len());
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), o);
        }
    }

    #[test]
    fn unknown_words_are_refused_clearly() {
        for bad in [
            "",
            "x",
            "download",
            "Grant",
            "check:write",
            "check:",
            "denied:",
            "denied:grant",
            "denied:sesphr.v1.CloudStorage/Nope",
            "sesphr.v1.CloudStorage/GetRecord/",
        ] {
            let e = bad.parse::<AuditAction>().unwrap_err();
            assert!(
                matches!(&e, DomainError::Malformed(m) if m.contains("unknown audit action")),
                "{bad:?}: {e:?}"
            );
        }
        for bad in ["", "OK", "refused", "allowed "] {
            let e = bad.parse::<Outcome>().unwrap_err();
            assert!(
                matches!(&e, DomainError::Malformed(m) if m.contains("unknown audit outcome")),
                "{bad:?}: {e:?}"
            );
        }
    }
}
