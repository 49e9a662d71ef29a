//! AccessPolicy: grants and revocations of what is not the caller's,
//! malformed grants, and the service-only and audit RPCs called by users.

use sesphr::proto;
use sesphr_client::raw::MeshClients;
use tonic::Code;

use super::{Case, Outcome, Refused, World, answered, case};
use crate::common::check_mallory_reads_alice;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_without_side_effects() {
    super::run(cases).await;
}

/// Grants `grantee` (as `role`) `owner`'s `partition`, with `edit` applied
/// to the grant.
async fn grant(
    c: &MeshClients,
    (owner, partition, grantee, role): (&str, &str, &str, proto::Role),
    edit: impl FnOnce(&mut proto::AccessGrant),
) -> Outcome {
    let mut g = proto::AccessGrant {
        owner_id: owner.to_owned(),
        partition: partition.to_owned(),
        grantee_id: grantee.to_owned(),
        grantee_role: role as i32,
        ..Default::default()
    };
    edit(&mut g);
    grant_request(c, proto::GrantRequest { grant: Some(g) }).await
}

async fn grant_request(c: &MeshClients, req: proto::GrantRequest) -> Outcome {
    answered(c.policy.clone().grant(req)).await
}

async fn record_event(c: &MeshClients, req: proto::RecordEventRequest) -> Outcome {
    answered(c.policy.clone().record_event(req)).await
}

async fn list_audit(c: &MeshClients, req: proto::ListAuditRequest) -> Outcome {
    answered(c.policy.clone().list_audit(req)).await
}

async fn verify_audit(c: &MeshClients, req: proto::VerifyAuditRequest) -> Outcome {
    answered(c.policy.clone().verify_audit(req)).await
}

/// The caller's own medical partition for eve, a nurse.
const EVE: (&str, &str, &str, proto::Role) = ("", "medical", "eve", proto::Role::Nurse);

/// Revokes bob's grant on the caller's medical partition.
async fn revoke_bob(c: &MeshClients) -> Outcome {
    answered(c.policy.clone().revoke(proto::RevokeRequest {
        partition: "medical".into(),
        grantee_id: "bob".into(),
    }))
    .await
}

fn cases(w: &World) -> Vec<Case<'_>> {
    let bc = &w.bob.clients;
    let mc = &w.mallory.clients;
    let ec = &w.eve.clients;
    vec![
        case(
            "Grant: practitioner granting itself more",
            Refused(Code::PermissionDenied, "may not call"),
            grant(
                bc,
                ("alice", "insurance", "bob", proto::Role::Doctor),
                |_| {},
            ),
        ),
        case(
            "Grant: another patient granting the victim's partition",
            Refused(
                Code::PermissionDenied,
                "may only grant access to its own records",
            ),
            grant(mc, ("alice", "medical", "eve", proto::Role::Nurse), |_| {}),
        ),
        case(
            "Grant: no grant in the request",
            Refused(Code::InvalidArgument, "grant is required"),
            grant_request(mc, proto::GrantRequest { grant: None }),
        ),
        case(
            "Grant: unknown grantee role",
            Refused(Code::InvalidArgument, "grantee_role must be a known role"),
            grant(mc, EVE, |g| g.grantee_role = 42),
        ),
        case(
            "Grant: already expired",
            Refused(Code::InvalidArgument, "already be expired"),
            grant(mc, EVE, |g| {
                g.expires_at = Some(1);
                g.not_before = 0;
            }),
        ),
        case(
            "Grant: empty epoch range",
            Refused(Code::InvalidArgument, "is empty"),
            grant(mc, EVE, |g| {
                g.epoch_min = 5;
                g.epoch_max = Some(2);
            }),
        ),
        case(
            "Revoke: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            revoke_bob(bc),
        ),
        case(
            "Revoke: another patient revoking the victim's grant",
            Refused(Code::NotFound, ""),
            revoke_bob(mc),
        ),
        case(
            "Check: a patient posing as a service",
            Refused(Code::PermissionDenied, "may not call"),
            answered(check_mallory_reads_alice(mc)),
        ),
        case(
            "RecordEvent: a practitioner forging audit entries",
            Refused(Code::PermissionDenied, "may not call"),
            record_event(
                ec,
                proto::RecordEventRequest {
                    action: "grant".into(),
                    owner_id: "alice".into(),
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListAudit: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            list_audit(ec, proto::ListAuditRequest::default()),
        ),
        case(
            "VerifyAudit: expected hash of the wrong length",
            Refused(Code::InvalidArgument, "expected_hash (32 bytes)"),
            verify_audit(
                mc,
                proto::VerifyAuditRequest {
                    expected_seq: 1,
                    expected_hash: vec![0; 5],
                },
            ),
        ),
    ]
}
