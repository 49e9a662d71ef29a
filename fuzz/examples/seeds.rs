//! Writes the seed corpus: `cargo run --example seeds -- DIR` creates
//! `DIR/<target>/seed-N` for every fuzz target.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    for (name, _) in sesphr_fuzz::TARGETS {
        let d = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&d)?;
        for (i, s) in sesphr_fuzz::seeds(name).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s)?;
        }
    }
    Ok(())
}
