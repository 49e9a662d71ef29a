//! The fuzz checks as plain, bounded `cargo test` loops (any toolchain):
//! every file under `regressions/<target>/` (inputs that once crashed a
//! target), the seeds, and a few thousand seeded mutations of them.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// Mutations per target (`SESPHR_FUZZ_ITERS` overrides).
fn iterations() -> usize {
    std::env::var("SESPHR_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

fn mutate(rng: &mut ChaCha20Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let edits = 1 + rng.next_u32() % 4;
    for _ in 0..edits {
        let pos = |rng: &mut ChaCha20Rng, len: usize| (rng.next_u32() as usize) % len.max(1);
        match rng.next_u32() % 6 {
            0 if !v.is_empty() => {
                let i = pos(rng, v.len());
                v[i] ^= 1 << (rng.next_u32() % 8);
            }
            1 if !v.is_empty() => {
                let i = pos(rng, v.len());
                v[i] = rng.next_u32() as u8;
            }
            2 => {
                let cut = pos(rng, v.len() + 1);
                v.truncate(cut);
            }
            3 => {
                let i = pos(rng, v.len() + 1);
                let n = 1 + rng.next_u32() % 16;
                for _ in 0..n {
                    v.insert(i.min(v.len()), rng.next_u32() as u8);
                }
            }
            4 if v.len() > 1 => {
                let i = pos(rng, v.len());
                let j = pos(rng, v.len());
                v.swap(i, j);
            }
            _ => {
                let n = (rng.next_u32() % 300) as usize;
                v = (0..n).map(|_| rng.next_u32() as u8).collect();
            }
        }
    }
    v
}

#[test]
fn every_target_survives_its_regressions_seeds_and_mutations() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for (name, check) in sesphr_fuzz::TARGETS {
        if let Ok(entries) = std::fs::read_dir(dir.join(name)) {
            for e in entries.flatten() {
                check(&std::fs::read(e.path()).unwrap());
            }
        }
        let seeds = sesphr_fuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for s in &seeds {
            check(s);
        }
        let mut rng = ChaCha20Rng::seed_from_u64(name.len() as u64);
        for i in 0..iterations() {
            let input = mutate(&mut rng, &seeds[i % seeds.len()]);
            check(&input);
        }
    }
}

#[test]
fn record_stream_seeds_open_and_truncations_do_not() {
    for (i, n) in [0usize, 1, 4095, 4096, 4097, 10_000].into_iter().enumerate() {
        let seed = &sesphr_fuzz::seeds("record_stream")[i];
        assert_eq!(sesphr_fuzz::open_stream(seed), Some(n), "seed {i}");
        if seed.len() > 2 {
            // Cut anywhere: never opens.
            for cut in [1, seed.len() / 2, seed.len() - 1] {
                assert_eq!(sesphr_fuzz::open_stream(&seed[..cut]), None, "{n} cut at {cut}");
            }
        }
    }
}
