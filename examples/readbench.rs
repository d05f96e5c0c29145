//! Bench helper for `scripts/bench-mount`: timed reads, the same code against a mount and a
//! native directory, so the ratio measures the filesystem and not the tool.
//!
//!   readbench small ROOT LIST ROUNDS   open+read+close every file of LIST (paths relative to
//!                                      ROOT); prints the best round's nanoseconds per file
//!   readbench seq FILE                 read FILE sequentially in 1 MiB chunks; prints seconds

use std::io::Read;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("small") if args.len() == 5 => {
            let root = std::path::Path::new(&args[2]);
            let list: Vec<_> = std::fs::read_to_string(&args[3])?
                .lines()
                .map(|l| root.join(l))
                .collect();
            let rounds: usize = args[4].parse()?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let t = Instant::now();
                for p in &list {
                    let mut f = std::fs::File::open(p)?;
                    while f.read(&mut buf)? > 0 {}
                }
                best = best.min(t.elapsed().as_nanos() as f64 / list.len() as f64);
            }
            println!("{best:.0}");
        }
        Some("seq") if args.len() == 3 => {
            let mut f = std::fs::File::open(&args[2])?;
            let mut buf = vec![0u8; 1 << 20];
            let t = Instant::now();
            let mut total = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(total > 0, "empty file");
            println!("{secs:.4}");
        }
        _ => anyhow::bail!("usage: readbench small ROOT LIST ROUNDS | readbench seq FILE"),
    }
    Ok(())
}
