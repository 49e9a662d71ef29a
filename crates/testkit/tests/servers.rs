//! The servers start, answer, and are gone after their handles drop.

use std::process::Command;

use sesphr_testkit::{Garage, Postgres};

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purpose; /proc/PID/stat's state says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

#[test]
fn postgres_answers_sql_and_stops_on_drop() {
    let pg = Postgres::start().unwrap();
    let other = pg.create_database("other_db").unwrap();
    for url in [pg.url(), other] {
        let out = Command::new("psql")
            .args([url.as_str(), "-tAc", "SELECT 40 + 2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }
    assert!(pg.create_database("Bad;Name").is_err());
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!alive(pid), "postgres {pid} still runs after drop");
}

#[test]
fn garage_cluster_of_three_survives_one_node_lost() {
    let mut g = Garage::start(3).unwrap();
    let s3 = g.s3(0);
    assert!(s3.endpoint.starts_with("http://127.0.0.1:"));
    assert!(s3.access_key_id.starts_with("GK"));
    let pid = g.pid(2).unwrap();
    g.kill_node(2);
    assert!(!alive(pid));
    assert!(g.pid(2).is_none());
    g.start_node(2).unwrap();
    let pids: Vec<u32> = (0..3).map(|i| g.pid(i).unwrap()).collect();
    drop(g);
    for p in pids {
        assert!(!alive(p), "garage {p} still runs after drop");
    }
}
