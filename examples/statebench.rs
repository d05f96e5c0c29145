//! Measures state loading and writing on a state shaped like `scripts/bench --files N` makes:
//! 90% object entries `dNN/sNN/fI.txt`, 10% inline `.json` values.
//!
//!   cargo run --release --example statebench [FILES] [ROUNDS]
//!
//! Prints the best of ROUNDS (default 7) for `State::from_json_bytes`, `to_canonical_bytes` and
//! `state_id`, in milliseconds.

use pvrfs::state::State;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let files: usize = args.get(1).map_or(Ok(100_000), |a| a.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(7), |a| a.parse())?;

    let bytes = state_json(files);
    let state = State::from_json_bytes(&bytes, "statebench")?;
    // The generator writes canonical JSON, so the round trip must be exact.
    anyhow::ensure!(state.to_canonical_bytes() == bytes, "not canonical");
    println!("state: {} entries, {} bytes", state.len(), bytes.len());

    let parse = best(rounds, || {
        drop(State::from_json_bytes(&bytes, "statebench").unwrap())
    });
    let canon = best(rounds, || drop(state.to_canonical_bytes()));
    let id = best(rounds, || {
        std::hint::black_box(state.state_id());
    });
    for (what, t) in [
        ("from_json_bytes", parse),
        ("to_canonical_bytes", canon),
        ("state_id", id),
    ] {
        println!("{what:20} {:8.2} ms", t.as_secs_f64() * 1e3);
    }
    Ok(())
}

/// Best wall time of `rounds` runs (the drop of the result included, as a real load pays it).
fn best(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Canonical state JSON with `files` entries, deterministic (a fixed LCG stands in for content).
fn state_json(files: usize) -> Vec<u8> {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed
    };
    let mut members = BTreeMap::new();
    members.insert(
        "#spec".to_string(),
        "\"pantavisor-service-system@1\"".to_string(),
    );
    for i in 0..files {
        let dir = format!("d{:02}/s{:02}", i % 100, (i / 100) % 100);
        if i % 10 == 0 {
            let v = format!(
                r#"{{"id":{i},"name":"file {i}","tags":["a","b"],"v":{}E-1}}"#,
                next() % 1_000_000 + 1
            );
            // Canonical text of 0.xxxxxx: digits without trailing zeros, then the exponent.
            let v = pvrfs::json::to_canonical(&pvrfs::json::parse(v.as_bytes()).unwrap());
            members.insert(format!("{dir}/f{i}.json"), String::from_utf8(v).unwrap());
        } else {
            let id: String = (0..4).map(|_| format!("{:016x}", next())).collect();
            members.insert(format!("{dir}/f{i}.txt"), format!("\"{id}\""));
        }
    }
    let mut out = b"{".to_vec();
    for (n, (k, v)) in members.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"{k}\":{v}").as_bytes());
    }
    out.push(b'}');
    out
}
