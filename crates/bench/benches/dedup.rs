//! Deduplication figures (run: `cargo bench --bench dedup`): storage used by
//! ten owners uploading the same file, and the wall time of a duplicate
//! upload next to the first upload. A real in-process mesh over loopback
//! mTLS with sled in a temp dir; prints a Markdown table.

use std::path::Path;
use std::time::Instant;

use sesphr_client::{self as client, Patient, Stored};
use sesphr_identity::Role;
use sesphr_server::daemon::{DevMesh, DevOptions};

const OWNERS: usize = 10;

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p);
            } else if let Ok(m) = p.metadata() {
                total += m.len();
            }
        }
    }
    total
}

fn main() {
    // `cargo bench` passes --bench; a size in MiB may follow.
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(mib));
}

async fn run(mib: u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mesh = DevMesh::start(DevOptions::new(tmp.path().join("mesh")).ephemeral())
        .await
        .expect("mesh");
    mesh.wait_ready(std::time::Duration::from_secs(30))
        .await
        .expect("ready");
    let file = tmp.path().join("scan.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..(mib << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    let len = mib << 20;
    // Patients register themselves on a dev mesh: no invitation.
    let token = "";
    let mut times = Vec::new();
    let mut first_owner = None;
    for i in 0..OWNERS {
        let id = format!("owner{i}");
        let home = tmp.path().join("users").join(&id);
        client::enroll(&mesh.mesh, &home, &id, Role::Patient, token)
            .await
            .unwrap();
        let p = Patient::open(&mesh.mesh, &home).unwrap();
        let f = std::fs::File::open(&file).unwrap();
        let start = Instant::now();
        let (record, stored) = p
            .upload_dedup("imaging", f, len, client::no_progress())
            .await
            .unwrap();
        times.push((start.elapsed(), stored));
        first_owner.get_or_insert((p, record.record_id));
    }
    // CloudStorage's layout (services/cloud-storage/src/layout.rs): blobs
    // and records beside the metadata database.
    let cs = tmp.path().join("mesh/cloud-storage");
    let stored = dir_bytes(&cs.join("blobs.v2")) + dir_bytes(&cs.join("records"));
    let sled = dir_bytes(&cs.join("metadata"));
    assert!(stored > 0, "the layout named here is CloudStorage's");
    let one_copy = sesphr_client::dedup_blob_len(len);
    assert_eq!(times[0].1, Stored::New);
    assert!(times[1..].iter().all(|(_, s)| *s == Stored::Deduplicated));
    let first = times[0].0.as_secs_f64();
    let dups: Vec<f64> = times[1..].iter().map(|(t, _)| t.as_secs_f64()).collect();
    let dup_mean = dups.iter().sum::<f64>() / dups.len() as f64;
    println!("| measure | value |");
    println!("|---|---|");
    println!("| file size | {mib} MiB |");
    println!(
        "| ciphertext stored after {OWNERS} owners uploaded it | {:.1} MiB ({:.3}× one copy) |",
        stored as f64 / (1 << 20) as f64,
        stored as f64 / one_copy as f64
    );
    println!(
        "| CloudStorage sled metadata | {:.2} MiB |",
        sled as f64 / (1 << 20) as f64
    );
    println!("| first upload (stored new) | {first:.2} s |");
    println!(
        "| duplicate upload (mean of {}) | {dup_mean:.2} s ({:.2}× the first) |",
        dups.len(),
        dup_mean / first
    );
    // Reading it back (min of 3): the blob streamed, opened and checked
    // against its id.
    let (owner, record_id) = first_owner.expect("an owner uploaded");
    let back = tmp.path().join("back.bin");
    let mut down = f64::INFINITY;
    for _ in 0..3 {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&back).unwrap());
        let start = Instant::now();
        owner
            .download(&record_id, &mut out, client::no_progress())
            .await
            .unwrap();
        down = down.min(start.elapsed().as_secs_f64());
    }
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&file).unwrap(),
        "the download is the file"
    );
    println!("| download (min of 3) | {down:.2} s |");
    mesh.shutdown().await.unwrap();
}
