//! SRS: enrollments with bad invitations, keys, CSRs and stolen names (setup
//! service); kfrag shares filed by the wrong hands or at the wrong node,
//! re-encryption beyond a grant, OPRF inputs off the curve (nodes).

use std::time::Duration;

use sesphr::proto;
use sesphr_client::{TimedChannel, raw::MeshClients, receiving_keys};
use sesphr_crypto::{MasterSecret, RecordHeader};
use sesphr_mesh::tls;
use tonic::Code;

use super::{Accepted, Case, Outcome, Refused, World, answered, case};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_without_side_effects() {
    super::run(cases).await;
}

/// Enrolls over an anonymous (certificate-less) TLS channel, as a new user does.
async fn enroll(w: &World, req: proto::EnrollRequest) -> Outcome {
    let srs = sesphr_identity::Identity::service(
        sesphr_identity::DEFAULT_TRUST_DOMAIN,
        sesphr_identity::Service::Srs,
    );
    let ch = tls::channel(
        &w.srs_url,
        tls::anonymous_client_config(&w.ca_pem),
        &srs,
        Duration::from_secs(10),
    )
    .unwrap();
    let r = proto::srs_client::SrsClient::new(ch)
        .enroll(req)
        .await?
        .into_inner();
    Ok(format!("enrolled as {}", r.spiffe_id))
}

/// A complete, valid enrollment request for `user_id` (the invitation
/// aside: `""` is a patient's self-registration).
fn enroll_request(token: &str, user_id: &str, role: proto::Role) -> proto::EnrollRequest {
    let master = MasterSecret::generate(&mut rand::rng());
    let (_, pk) = receiving_keys(&master).unwrap();
    let (csr_der, _) = sesphr_mesh::pki::make_csr().unwrap();
    proto::EnrollRequest {
        invitation: token.to_owned(),
        user_id: user_id.to_owned(),
        role: role as i32,
        csr_der,
        pre_public_key: pk.to_bytes().to_vec(),
        verifying_key: master.signing_key().verifying_key().to_bytes().to_vec(),
        ..Default::default()
    }
}

/// A valid enrollment of a new patient "zed", with one field spoiled.
fn zed_with(w: &World, spoil: impl FnOnce(&mut proto::EnrollRequest)) -> proto::EnrollRequest {
    let mut r = enroll_request(&w.token, "zed", proto::Role::Patient);
    spoil(&mut r);
    r
}

async fn get_user(c: &MeshClients, user_id: &str) -> Outcome {
    answered(c.srs.clone().get_user(proto::GetUserRequest {
        user_id: user_id.to_owned(),
    }))
    .await
}

/// Node `node` (1-based) of the caller's mesh.
fn node(c: &MeshClients, node: usize) -> proto::srs_node_client::SrsNodeClient<TimedChannel> {
    c.nodes.nodes[node - 1].client.clone()
}

/// Files `kfrag` at node `at` for `grantee` on the medical partition, epoch 0.
async fn put_kfrag(
    c: &MeshClients,
    at: usize,
    grantee: &str,
    delegating: &[u8],
    kfrag: Vec<u8>,
) -> Outcome {
    answered(node(c, at).put_kfrag(proto::PutKfragRequest {
        partition: "medical".into(),
        epoch: 0,
        grantee_id: grantee.to_owned(),
        delegating_public_key: delegating.to_vec(),
        kfrag,
    }))
    .await
}

/// Files alice's medical share `share` (made for bob, for node `share`) at
/// node `at`, for `grantee`.
async fn put_alices_kfrag(
    w: &World,
    c: &MeshClients,
    at: usize,
    share: usize,
    grantee: &str,
) -> Outcome {
    put_kfrag(c, at, grantee, &w.alice_med_pk, w.kfrags[share - 1].clone()).await
}

/// Deletes the caller's kfrags for bob on `partition`, every epoch, at node 1.
async fn delete_kfrags(c: &MeshClients, partition: &str) -> Outcome {
    answered(node(c, 1).delete_kfrags(proto::DeleteKfragsRequest {
        partition: partition.to_owned(),
        grantee_id: "bob".into(),
        epoch: None,
    }))
    .await
}

async fn reencrypt(
    c: &MeshClients,
    owner: &str,
    partition: &str,
    epoch: u32,
    capsules: Vec<Vec<u8>>,
) -> Outcome {
    let req = proto::ReEncryptRequest {
        owner_id: owner.to_owned(),
        partition: partition.to_owned(),
        epoch,
        capsules,
        ..Default::default()
    };
    let r = node(c, 1).re_encrypt(req).await?.into_inner();
    Ok(format!("{} cfrags", r.cfrags.len()))
}

async fn evaluate(c: &MeshClients, req: proto::EvaluateContentKeyRequest) -> Outcome {
    answered(node(c, 2).evaluate_content_key(req)).await
}

/// The capsule of a record's header, as a re-encryption request carries it.
fn capsule_of(m: &sesphr_client::Record) -> Vec<u8> {
    RecordHeader::from_bytes(&m.record_header)
        .unwrap()
        .capsule()
        .to_bytes()
        .to_vec()
}

fn cases(w: &World) -> Vec<Case<'_>> {
    let ac = &w.alice.clients;
    let bc = &w.bob.clients;
    let cc = &w.carol.clients;
    let dc = &w.dave.clients;
    let mc = &w.mallory.clients;
    let op = &w.operator;
    let token = &w.token;
    let med = capsule_of(&w.medical);
    vec![
        // ---- Enroll ----
        case(
            "Enroll: malformed invitation",
            Refused(Code::PermissionDenied, "invitation is malformed"),
            enroll(w, enroll_request("guess", "zed", proto::Role::Patient)),
        ),
        case(
            "Enroll: forged invitation (right shape, unknown)",
            Refused(Code::PermissionDenied, "invitation is not valid"),
            enroll(
                w,
                enroll_request(
                    &format!("inv1-{}", "0".repeat(64)),
                    "zed",
                    proto::Role::Doctor,
                ),
            ),
        ),
        case(
            "Enroll: a self-asserted doctor (no invitation)",
            Refused(Code::PermissionDenied, "requires an invitation"),
            enroll(w, enroll_request("", "dr-house", proto::Role::Doctor)),
        ),
        case(
            "Enroll: a self-asserted emergency role (no invitation)",
            Refused(Code::PermissionDenied, "requires an invitation"),
            enroll(w, enroll_request("", "er-doc", proto::Role::Emergency)),
        ),
        case(
            "Enroll: taking over the victim's user id",
            Refused(Code::AlreadyExists, "alice"),
            enroll(w, enroll_request(token, "alice", proto::Role::Patient)),
        ),
        case(
            "Enroll: taking over the victim's id under another role",
            Refused(Code::PermissionDenied, "requires an invitation"),
            enroll(w, enroll_request(token, "alice", proto::Role::Doctor)),
        ),
        case(
            "Enroll: role unspecified",
            Refused(Code::InvalidArgument, "role must be set"),
            enroll(w, zed_with(w, |r| r.role = 0)),
        ),
        case(
            "Enroll: unknown role 99",
            Refused(Code::InvalidArgument, "role must be set"),
            enroll(w, zed_with(w, |r| r.role = 99)),
        ),
        case(
            "Enroll: garbage PRE public key",
            Refused(Code::InvalidArgument, "pre_public_key is not a valid"),
            enroll(w, zed_with(w, |r| r.pre_public_key = vec![5; 33])),
        ),
        case(
            "Enroll: garbage verifying key",
            Refused(Code::InvalidArgument, "verifying_key is not a valid"),
            enroll(w, zed_with(w, |r| r.verifying_key = vec![9; 5])),
        ),
        case(
            "Enroll: garbage CSR",
            Refused(
                Code::InvalidArgument,
                "certificate signing request rejected",
            ),
            enroll(
                w,
                zed_with(w, |r| r.csr_der = vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3]),
            ),
        ),
        case(
            "Enroll: 20 kB CSR",
            Refused(Code::InvalidArgument, "csr_der must be 1 to"),
            enroll(w, zed_with(w, |r| r.csr_der = vec![0x30; 20 << 10])),
        ),
        case(
            "Enroll: 10 kB user id",
            Refused(Code::InvalidArgument, "user id"),
            enroll(w, enroll_request(token, &w.long_id, proto::Role::Patient)),
        ),
        // ---- GetUser ----
        case(
            "GetUser: invalid id",
            Refused(Code::InvalidArgument, "user id"),
            get_user(mc, "robert'; DROP TABLE users;--"),
        ),
        case(
            "GetUser: unknown user",
            Refused(Code::NotFound, "no enrolled user"),
            get_user(mc, "nobody"),
        ),
        // ---- PutKfrag ----
        case(
            "PutKfrag: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            put_alices_kfrag(w, bc, 1, 1, "carol"),
        ),
        case(
            "PutKfrag: the victim's share replayed by another patient",
            Refused(Code::InvalidArgument, "is not node 1's share"),
            put_alices_kfrag(w, mc, 1, 1, "bob"),
        ),
        case(
            "PutKfrag: share for bob filed for carol",
            Refused(Code::InvalidArgument, "is not node 1's share"),
            put_alices_kfrag(w, ac, 1, 1, "carol"),
        ),
        case(
            "PutKfrag: node 2's share sent to node 1",
            Refused(Code::InvalidArgument, "is not node 1's share"),
            put_alices_kfrag(w, ac, 1, 2, "bob"),
        ),
        case(
            "PutKfrag: node 1's share sent to node 3",
            Refused(Code::InvalidArgument, "is not node 3's share"),
            put_alices_kfrag(w, ac, 3, 1, "bob"),
        ),
        case(
            "PutKfrag: garbage kfrag",
            Refused(Code::InvalidArgument, "kfrag is malformed"),
            put_kfrag(mc, 1, "bob", &w.alice_med_pk, vec![0xAA; 200]),
        ),
        case(
            "PutKfrag: no kfrag",
            Refused(Code::InvalidArgument, "kfrag must be 1 to 4096 bytes"),
            put_kfrag(mc, 1, "bob", &w.alice_med_pk, vec![]),
        ),
        case(
            "PutKfrag: 5 kB kfrag",
            Refused(Code::InvalidArgument, "kfrag must be 1 to 4096 bytes"),
            put_kfrag(mc, 1, "bob", &w.alice_med_pk, vec![0xAA; 5000]),
        ),
        case(
            "PutKfrag: garbage delegating key",
            Refused(
                Code::InvalidArgument,
                "delegating_public_key is not a valid",
            ),
            put_kfrag(mc, 1, "bob", &[4; 65], w.kfrags[0].clone()),
        ),
        case(
            "PutKfrag: to oneself",
            Refused(Code::InvalidArgument, "needs no kfrags for itself"),
            put_alices_kfrag(w, mc, 1, 1, "mallory"),
        ),
        case(
            "PutKfrag: to an unknown grantee",
            Refused(Code::InvalidArgument, "is not node 1's share"),
            put_alices_kfrag(w, mc, 1, 1, "ghost"),
        ),
        // ---- DeleteKfrags ----
        case(
            "DeleteKfrags: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            delete_kfrags(bc, "medical"),
        ),
        case(
            "DeleteKfrags: invalid partition",
            Refused(Code::InvalidArgument, "partition"),
            delete_kfrags(mc, ""),
        ),
        case(
            "DeleteKfrags: another patient only reaches its own (none)",
            Accepted("removed: 0"),
            delete_kfrags(mc, "medical"),
        ),
        // ---- ReEncrypt ----
        case(
            "ReEncrypt: garbage capsule",
            Refused(Code::InvalidArgument, "capsule 0 is malformed"),
            reencrypt(bc, "alice", "medical", 0, vec![vec![0x55; 98]]),
        ),
        case(
            "ReEncrypt: truncated capsule",
            Refused(Code::InvalidArgument, "capsule 0 is malformed"),
            reencrypt(bc, "alice", "medical", 0, vec![med[..40].to_vec()]),
        ),
        case(
            "ReEncrypt: no capsules",
            Refused(Code::InvalidArgument, "send 1 to 64 capsules, not 0"),
            reencrypt(bc, "alice", "medical", 0, vec![]),
        ),
        case(
            "ReEncrypt: 65 capsules",
            Refused(Code::InvalidArgument, "send 1 to 64 capsules, not 65"),
            reencrypt(bc, "alice", "medical", 0, vec![med.clone(); 65]),
        ),
        case(
            "ReEncrypt: grantee of nothing",
            Refused(
                Code::PermissionDenied,
                "may not have alice's medical partition re-encrypted",
            ),
            reencrypt(cc, "alice", "medical", 0, vec![med.clone()]),
        ),
        case(
            "ReEncrypt: grantee of another partition",
            Refused(
                Code::PermissionDenied,
                "may not have alice's insurance partition re-encrypted",
            ),
            reencrypt(bc, "alice", "insurance", 0, vec![capsule_of(&w.insurance)]),
        ),
        case(
            "ReEncrypt: an epoch no kfrag exists for",
            Refused(Code::PermissionDenied, "holds no re-encryption key"),
            reencrypt(bc, "alice", "medical", 7, vec![med.clone()]),
        ),
        case(
            "ReEncrypt: expired grant",
            Refused(Code::PermissionDenied, "expired"),
            reencrypt(dc, "alice", "personal", 0, vec![capsule_of(&w.personal)]),
        ),
        case(
            "ReEncrypt: another patient",
            Refused(
                Code::PermissionDenied,
                "may not have alice's medical partition re-encrypted",
            ),
            reencrypt(mc, "alice", "medical", 0, vec![med.clone()]),
        ),
        case(
            "ReEncrypt: operator",
            Refused(Code::PermissionDenied, "may not call"),
            reencrypt(op, "alice", "medical", 0, vec![med.clone()]),
        ),
        case(
            "ReEncrypt: invalid owner id",
            Refused(Code::InvalidArgument, "user id"),
            reencrypt(bc, "ALICE!", "medical", 0, vec![med]),
        ),
        // ---- EvaluateContentKey (deduplication) ----
        case(
            "EvaluateContentKey: not a curve point",
            Refused(
                Code::InvalidArgument,
                "blinded_element is not a valid P-256 point",
            ),
            evaluate(
                mc,
                proto::EvaluateContentKeyRequest {
                    blinded_element: vec![7; 33],
                },
            ),
        ),
        case(
            "EvaluateContentKey: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            evaluate(bc, proto::EvaluateContentKeyRequest::default()),
        ),
    ]
}
