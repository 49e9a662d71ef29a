//! Walks the authorization table (`sesphr::rpc::TABLE`) against live
//! servers: every RPC, called by every kind of identity, is refused with
//! "may not call" exactly when the table says so.

use crate::common;

use common::Sandbox;
use sesphr::proto;
use sesphr::rpc::Rpc;
use sesphr_client::raw::MeshClients;
use sesphr_identity::{Identity, NodeIndex, Role, Service};
use sesphr_mesh::auth::is_allowed;
use tonic::{Code, Status};

const TD: &str = "sesphr.local";

/// Calls `rpc` with an empty request; returns the status (Ok = OK).
async fn call(c: &MeshClients, rpc: Rpc) -> Result<(), Status> {
    let (mut cloud, mut srs, mut policy) = (c.cloud.clone(), c.srs.clone(), c.policy.clone());
    let mut node = c.nodes.nodes[0].client.clone();
    match rpc {
        Rpc::PutRecord => cloud
            .put_record(futures::stream::iter(Vec::<proto::PutRecordRequest>::new()))
            .await
            .map(drop),
        Rpc::GetRecord => cloud
            .get_record(proto::GetRecordRequest::default())
            .await
            .map(drop),
        Rpc::ListRecords => cloud
            .list_records(proto::ListRecordsRequest::default())
            .await
            .map(drop),
        Rpc::DeleteRecord => cloud
            .delete_record(proto::DeleteRecordRequest::default())
            .await
            .map(drop),
        Rpc::QueryBlob => cloud
            .query_blob(proto::QueryBlobRequest::default())
            .await
            .map(drop),
        Rpc::EvaluateContentKey => node
            .evaluate_content_key(proto::EvaluateContentKeyRequest::default())
            .await
            .map(drop),
        Rpc::Enroll => srs.enroll(proto::EnrollRequest::default()).await.map(drop),
        Rpc::Invite => srs.invite(proto::InviteRequest::default()).await.map(drop),
        Rpc::Renew => srs.renew(proto::RenewRequest::default()).await.map(drop),
        Rpc::DisableUser => policy
            .disable_user(proto::SetUserStatusRequest::default())
            .await
            .map(drop),
        Rpc::EnableUser => policy
            .enable_user(proto::SetUserStatusRequest::default())
            .await
            .map(drop),
        Rpc::GetDenyList => policy
            .get_deny_list(proto::GetDenyListRequest::default())
            .await
            .map(drop),
        Rpc::GetUser => srs
            .get_user(proto::GetUserRequest::default())
            .await
            .map(drop),
        Rpc::ListDevices => srs
            .list_devices(proto::ListDevicesRequest::default())
            .await
            .map(drop),
        Rpc::RemoveDevice => srs
            .remove_device(proto::RemoveDeviceRequest::default())
            .await
            .map(drop),
        Rpc::SetRecovery => srs
            .set_recovery(proto::SetRecoveryRequest::default())
            .await
            .map(drop),
        Rpc::GetRecovery => srs
            .get_recovery(proto::GetRecoveryRequest::default())
            .await
            .map(drop),
        Rpc::GetRecoveryShare => srs
            .get_recovery_share(proto::GetRecoveryShareRequest::default())
            .await
            .map(drop),
        Rpc::RevokeDevice => policy
            .revoke_device(proto::RevokeDeviceRequest::default())
            .await
            .map(drop),
        Rpc::PutKfrag => node
            .put_kfrag(proto::PutKfragRequest::default())
            .await
            .map(drop),
        Rpc::DeleteKfrags => node
            .delete_kfrags(proto::DeleteKfragsRequest::default())
            .await
            .map(drop),
        Rpc::ReEncrypt => node
            .re_encrypt(proto::ReEncryptRequest::default())
            .await
            .map(drop),
        Rpc::Grant => policy.grant(proto::GrantRequest::default()).await.map(drop),
        Rpc::Revoke => policy
            .revoke(proto::RevokeRequest::default())
            .await
            .map(drop),
        Rpc::Check => policy.check(proto::CheckRequest::default()).await.map(drop),
        Rpc::ListGrants => policy
            .list_grants(proto::ListGrantsRequest::default())
            .await
            .map(drop),
        Rpc::ListAudit => policy
            .list_audit(proto::ListAuditRequest::default())
            .await
            .map(drop),
        Rpc::VerifyAudit => policy
            .verify_audit(proto::VerifyAuditRequest::default())
            .await
            .map(drop),
        Rpc::GetCheckpoint => policy
            .get_checkpoint(proto::GetCheckpointRequest::default())
            .await
            .map(drop),
        Rpc::GetInclusionProofs => policy
            .get_inclusion_proofs(proto::GetInclusionProofsRequest::default())
            .await
            .map(drop),
        Rpc::GetConsistencyProof => policy
            .get_consistency_proof(proto::GetConsistencyProofRequest::default())
            .await
            .map(drop),
        Rpc::AddCosignature => policy
            .add_cosignature(proto::AddCosignatureRequest::default())
            .await
            .map(drop),
        Rpc::RecordEvent => policy
            .record_event(proto::RecordEventRequest::default())
            .await
            .map(drop),
        Rpc::Health | Rpc::Reflection => unreachable!("checked in tests/mesh.rs"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_callers_the_table_names() {
    let s = Sandbox::start().await;
    let callers = [
        Identity::user(TD, Role::Patient, "alice").unwrap(),
        Identity::user(TD, Role::Doctor, "bob").unwrap(),
        Identity::user(TD, Role::Family, "dave").unwrap(),
        Identity::service(TD, Service::CloudStorage),
        Identity::service(TD, Service::Srs),
        Identity::service(TD, Service::AccessPolicy),
        Identity::srs_node(TD, NodeIndex::new(2).unwrap()),
        Identity::operator(TD, "ops").unwrap(),
    ];
    let mut checked = 0;
    for caller in &callers {
        let clients = s.clients_as(caller);
        for rpc in Rpc::ALL {
            if matches!(rpc, Rpc::Health | Rpc::Reflection) {
                continue;
            }
            let status = call(&clients, rpc).await.err();
            let refused_by_table = status.as_ref().is_some_and(|st| {
                st.code() == Code::PermissionDenied && st.message().contains("may not call")
            });
            assert_eq!(
                refused_by_table,
                !is_allowed(rpc, caller),
                "{rpc} by {}: {status:?}",
                caller.short()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, callers.len() * (Rpc::ALL.len() - 2));
    s.shutdown().await;
}

#[test]
fn architecture_md_prints_the_enforced_table() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("<!-- authz-table:start -->\n")
        .expect("start marker");
    let end = doc.find("<!-- authz-table:end -->").expect("end marker");
    let printed = &doc[start + "<!-- authz-table:start -->\n".len()..end];
    assert_eq!(
        printed,
        sesphr::rpc::table_markdown(),
        "ARCHITECTURE.md is out of date: paste sesphr::rpc::table_markdown() between the markers"
    );
}
