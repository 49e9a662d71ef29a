//! More than one device per user, on a running mesh: a second machine
//! enrolled by the key proof alone reads and uploads with the same keys and
//! grants; removing it revokes its certificate at once at AccessPolicy and
//! within the deny list's staleness bound everywhere else, and it renews
//! nothing; a forged key proof gets no device.

use crate::common;

use std::time::{Duration, Instant};

use common::{Sandbox, download, upload};
use sesphr_client::restore::{RestoreFrom, RestoreOptions, restore};
use sesphr_client::{GrantOptions, Patient, Profile, admin};
use sesphr_identity::Role;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_works_until_it_is_removed() {
    let s = Sandbox::start().await;
    let mesh = s.mesh_file();
    let laptop = s.patient("alice").await;
    s.practitioner("bob", Role::Doctor).await;
    let first = upload(&laptop, "medical", b"from the laptop").await;
    laptop
        .grant("medical", "bob", GrantOptions::default())
        .await
        .unwrap();

    // The phone: a new profile from the master secret alone (no
    // certificate, no operator).
    let master = Profile::load(&s.home("alice"))
        .unwrap()
        .master_secret()
        .unwrap();
    let phone_home = s.home("alice-phone");
    let restored = restore(
        &mesh,
        &phone_home,
        RestoreFrom::Phrase {
            master,
            user_id: "alice".into(),
            role: None,
        },
        RestoreOptions {
            device: Some("phone"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(restored.device, "phone");
    let phone = Patient::open(&mesh, &phone_home).unwrap();
    assert_eq!(
        download(&phone, &first.record_id).await.unwrap(),
        b"from the laptop"
    );
    let second = upload(&phone, "medical", b"from the phone").await;
    assert_eq!(
        download(&laptop, &second.record_id).await.unwrap(),
        b"from the phone"
    );
    let bob = s.session("bob");
    assert_eq!(
        download(&bob, &second.record_id).await.unwrap(),
        b"from the phone"
    );

    // Both are listed; each knows which one it is.
    let listed = admin::list_devices(&mesh, &laptop.profile).await.unwrap();
    let names: Vec<(&str, bool)> = listed
        .iter()
        .map(|d| (d.name.as_str(), d.current))
        .collect();
    assert_eq!(names, [("device-1", true), ("phone", false)]);
    // A device does not remove itself.
    let err = admin::remove_device(&mesh, &phone.profile, "phone")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("another device"), "{err}");

    // The laptop removes the phone: AccessPolicy (which holds the list)
    // refuses it at once; every other service within the staleness bound.
    let removed_at = Instant::now();
    let until = admin::remove_device(&mesh, &laptop.profile, "phone")
        .await
        .unwrap();
    assert!(until > sesphr_client::unix_now());
    let err = phone.grants().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("was removed by its user"), "{err}");
    loop {
        match download(&phone, &first.record_id).await {
            Err(e) if e.code() == Some(Code::PermissionDenied) => {
                assert!(e.to_string().contains("was removed"), "{e}");
                break;
            }
            other => {
                assert!(
                    removed_at.elapsed() < Duration::from_secs(10),
                    "the removed phone still reads after 10 s: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Nor does it renew, even once a new certificate would be due.
    let err = admin::renew(&mesh, &phone.profile, true).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // The laptop and bob go on.
    assert_eq!(
        download(&laptop, &second.record_id).await.unwrap(),
        b"from the phone"
    );
    assert_eq!(
        download(&bob, &first.record_id).await.unwrap(),
        b"from the laptop"
    );
    let names: Vec<String> = admin::list_devices(&mesh, &laptop.profile)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["device-1"]);
    // Removing it again only sends the revocation again.
    admin::remove_device(&mesh, &laptop.profile, "phone")
        .await
        .unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_of_the_registered_key_gets_a_device() {
    let s = Sandbox::start().await;
    let mesh = s.mesh_file();
    s.patient("alice").await;
    let mallory = sesphr_crypto::MasterSecret::generate(&mut rand::rng());
    let err = admin::obtain_device_certificate(&mesh, &mallory, "alice", None, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // An id nobody enrolled: the same answer (nothing tells a stranger
    // whether an id is enrolled).
    let err2 = admin::obtain_device_certificate(&mesh, &mallory, "nobody", None, None, None)
        .await
        .unwrap_err();
    assert_eq!(err2.code(), Some(Code::PermissionDenied), "{err2}");
    assert_eq!(
        err.status().map(|s| s.message().to_owned()),
        err2.status().map(|s| s.message().to_owned())
    );
    // Alice's own key gets one, under her registered role.
    let master = Profile::load(&s.home("alice"))
        .unwrap()
        .master_secret()
        .unwrap();
    let issued = admin::obtain_device_certificate(&mesh, &master, "alice", None, None, None)
        .await
        .unwrap();
    assert_eq!(issued.device, "device-2");
    assert_eq!(issued.identity.as_user().unwrap().0, Role::Patient);
    s.shutdown().await;
}
