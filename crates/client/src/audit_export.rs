//! A verified audit read as an HL7 FHIR R4 `Bundle` of `AuditEvent`s, the
//! format hospital audit tooling reads.
//!
//! Each entry becomes one `AuditEvent` (`id` = the entry's sequence
//! number). What FHIR has no field for travels in extensions under
//! `urn:sesphr:fhir:`:
//!
//! - `audit-entry`: the entry's own fields verbatim (`seq`, `actor`,
//!   `action`, `ownerId`, `partition`, `subject`, `recordId`, `outcome`,
//!   `detail`, `time` as unix seconds, `salt`), so an independent verifier
//!   can rebuild the exact leaf bytes (docs/audit-log.md);
//! - `audit-log-proof`: `leafIndex`, `treeSize`, `rootHash`, one
//!   `inclusionProof` per audit-path hash (leaf to root), the `checkpoint`
//!   body, its `checkpointSignature` and each witness `cosignature`
//!   (`witness time signature`, base64 signature).
//!
//! Only entries proven in the checkpoint are exported.
//!
//! Integers beyond FHIR's 32-bit types are strings; binary values are
//! `valueBase64Binary` (standard base64).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{ProvenEntry, VerifiedAudit};

const EXT: &str = "urn:sesphr:fhir:";

fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

fn s(url: &str, v: impl Into<String>) -> Value {
    json!({"url": url, "valueString": v.into()})
}

fn b(url: &str, bytes: &[u8]) -> Value {
    json!({"url": url, "valueBase64Binary": B64.encode(bytes)})
}

/// FHIR `AuditEvent.action`: C(reate) R(ead) U(pdate) D(elete) E(xecute).
fn action_code(action: &str) -> &'static str {
    match action {
        "grant" => "C",
        "revoke" => "D",
        a if a.starts_with("check:read") || a.starts_with("check:list") => "R",
        _ => "E",
    }
}

/// FHIR `AuditEvent.outcome`: 0 success, 4 minor failure (a refusal), 8
/// serious failure.
fn outcome_code(outcome: &str) -> &'static str {
    match outcome {
        "ok" | "allowed" => "0",
        "denied" | "refused" => "4",
        _ => "8",
    }
}

fn event(p: &ProvenEntry, audit: &VerifiedAudit) -> Value {
    let e = &p.entry;
    let fields = vec![
        s("seq", e.seq.to_string()),
        s("time", e.time.to_string()),
        s("actor", &e.actor),
        s("action", &e.action),
        s("ownerId", &e.owner_id),
        s("partition", &e.partition),
        s("subject", &e.subject),
        s("recordId", &e.record_id),
        s("outcome", &e.outcome),
        s("detail", &e.detail),
        b("salt", &e.salt),
    ];
    let mut extension = vec![json!({"url": format!("{EXT}audit-entry"), "extension": fields})];
    if let (Some(path), Some(head)) = (&p.proof, &audit.head) {
        let mut proof = vec![
            s("leafIndex", (e.seq - 1).to_string()),
            s("treeSize", head.size.to_string()),
            b("rootHash", &head.root),
        ];
        proof.extend(path.iter().map(|h| b("inclusionProof", h)));
        proof.push(s("checkpoint", head.body()));
        proof.push(b("checkpointSignature", &audit.signature));
        for c in &audit.cosignatures {
            proof.push(s(
                "cosignature",
                format!("{} {} {}", c.witness, c.time, B64.encode(c.signature)),
            ));
        }
        extension.push(json!({"url": format!("{EXT}audit-log-proof"), "extension": proof}));
    }
    let mut entity_detail = vec![json!({"type": "owner", "valueString": e.owner_id})];
    if !e.partition.is_empty() {
        entity_detail.push(json!({"type": "partition", "valueString": e.partition}));
    }
    if !e.subject.is_empty() {
        entity_detail.push(json!({"type": "subject", "valueString": e.subject}));
    }
    let mut entity = json!({
        "what": {"identifier": {"system": "urn:sesphr:record", "value": e.record_id}},
        "detail": entity_detail,
    });
    if e.record_id.is_empty() {
        entity["what"] = json!({"display": format!("{} / {}", e.owner_id, e.partition)});
    }
    json!({
        "fullUrl": format!("urn:sesphr:audit:{}", e.seq),
        "resource": {
            "resourceType": "AuditEvent",
            "id": e.seq.to_string(),
            "extension": extension,
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
                "display": "RESTful Operation"
            },
            "subtype": [{"system": "urn:sesphr:audit-action", "code": e.action}],
            "action": action_code(&e.action),
            "recorded": rfc3339(e.time),
            "outcome": outcome_code(&e.outcome),
            "outcomeDesc": e.detail,
            "agent": [{
                "who": {"identifier": {"system": "urn:sesphr:identity", "value": e.actor}},
                "requestor": true
            }],
            "source": {"observer": {"display": "SeSPHR AccessPolicy"}},
            "entity": [entity],
        }
    })
}

/// The Bundle (type `collection`) of every proven entry of `audit` (those
/// newer than its checkpoint have no proof and are left out), stamped
/// `now`.
pub fn fhir_bundle(audit: &VerifiedAudit, now: i64) -> Value {
    let proven = audit.entries.iter().filter(|p| p.proof.is_some());
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": rfc3339(now),
        "entry": proven.map(|p| event(p, audit)).collect::<Vec<_>>(),
    })
}
