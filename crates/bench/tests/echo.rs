//! The baselines themselves: a real echo server on loopback with the dev
//! PKI's mTLS, plain and durable.

use std::time::Duration;

use sesphr_bench::{EchoClient, EchoServer, echo_server_tls, pki_tls, serve_echo};

const CHUNK: usize = 1 << 20;

async fn start(echo: EchoServer, pki: &std::path::Path) -> String {
    let tls = echo_server_tls(pki, "cloud-storage").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { serve_echo(listener, &tls, echo).await });
    url
}

/// A fresh dev PKI in a temporary directory, and its path.
fn dev_pki() -> (tempfile::TempDir, std::path::PathBuf) {
    sesphr_mesh::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    sesphr_mesh::pki::DevPki::ensure(&pki, sesphr_identity::DEFAULT_TRUST_DOMAIN).unwrap();
    (tmp, pki)
}

#[tokio::test]
async fn durable_echo_stores_what_it_moves_and_reads_it_back() {
    let (tmp, pki) = dev_pki();
    let objects = tmp.path().join("objects");
    let url = start(EchoServer::durable(&objects).unwrap(), &pki).await;
    let client = EchoClient::connect(&url, &pki_tls(&pki, "operator").unwrap()).unwrap();

    let size = 3 * CHUNK as u64 + 17;
    let (up, object) = tokio::time::timeout(Duration::from_secs(60), client.up(size, CHUNK))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up, size);
    // Acknowledged means written: the object is on disk, whole.
    let stored = std::fs::read(objects.join(object.to_string())).unwrap();
    assert_eq!(stored.len() as u64, size);
    assert!(stored.iter().all(|&b| b == 0x17));
    assert_eq!(client.down(size, CHUNK, object).await.unwrap(), size);
    // A second upload is a second object.
    let (_, second) = client.up(5, CHUNK).await.unwrap();
    assert_ne!(second, object);
    // Asking for more than was stored, or for an object never stored, fails
    // instead of inventing bytes.
    assert!(client.down(size + 1, CHUNK, object).await.is_err());
    assert!(client.down(1, CHUNK, 999).await.is_err());
}

#[tokio::test]
async fn plain_echo_stores_nothing() {
    let (tmp, pki) = dev_pki();
    let url = start(EchoServer::plain(), &pki).await;
    // An enrolled user's certificate (from the user CA), as the bench's
    // clients have.
    let dev = sesphr_mesh::pki::DevPki { dir: pki.clone() };
    let user = sesphr_identity::Identity::user(
        sesphr_identity::DEFAULT_TRUST_DOMAIN,
        sesphr_identity::Role::Patient,
        "echoer0",
    )
    .unwrap();
    let cert = dev.load_user_ca().unwrap().issue(&user, &[], &[]).unwrap();
    let tls = sesphr_mesh::tls::TlsMaterial::from_pem(
        cert.cert_pem.clone(),
        zeroize::Zeroizing::new(cert.key_pem.clone()),
        std::fs::read_to_string(dev.ca_cert()).unwrap(),
    )
    .unwrap();
    let client = EchoClient::connect(&url, &tls).unwrap();
    let size = 2 * CHUNK as u64 + 1;
    assert_eq!(client.up(size, CHUNK).await.unwrap().0, size);
    assert_eq!(client.down(size, CHUNK, 0).await.unwrap(), size);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}
