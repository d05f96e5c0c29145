//! Checks `pvrfs::json` byte for byte against the reference pvr's outputs: the
//! `canonical-json/*.jsonl` vectors and the JSON-shaped outputs of the repo cases (see
//! `tests/fixtures/canonical-json/`).

use std::fs;
use std::path::{Path, PathBuf};

use pvrfs::json::{self, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/canonical-json")
}

/// The lines of a `.jsonl` fixture as objects (read with plain serde_json: the fields are
/// ordinary strings and small integers).
fn jsonl(name: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let text = fs::read_to_string(fixtures().join(name)).expect("read fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str(l).expect("fixture line") {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        })
        .collect()
}

fn field<'a>(case: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    case.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{key} missing in {case:?}"))
}

fn canonical_of(input: &[u8]) -> Result<String, String> {
    json::parse(input)
        .map(|v| String::from_utf8(json::to_canonical(&v)).expect("utf-8"))
        .map_err(|e| e.to_string())
}

/// Runs `check` on every case, collecting failures so one run reports all of them.
fn check_all<T>(cases: &[T], mut check: impl FnMut(&T) -> Result<(), String>) -> usize {
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn cases_jsonl() {
    let cases = jsonl("cases.jsonl");
    let n = check_all(&cases, |c| {
        let got = canonical_of(field(c, "input").as_bytes());
        let want = field(c, "canonical");
        match got {
            Ok(g) if g == want => Ok(()),
            other => Err(format!(
                "{}: got {other:?}, want {want:?}",
                field(c, "name")
            )),
        }
    });
    assert_eq!(n, 87);
}

#[test]
fn invalid_input_jsonl() {
    let cases = jsonl("invalid-input.jsonl");
    let n = check_all(&cases, |c| {
        let name = field(c, "name");
        let got = canonical_of(field(c, "input").as_bytes());
        let want = match c.get("rc").and_then(|v| v.as_i64()) {
            Some(0) => Ok(field(c, "canonical").to_owned()),
            Some(3) => {
                let stderr = field(c, "stderr");
                let msg = stderr
                    .strip_prefix("JSON Unmarshal (x.json): ")
                    .and_then(|s| s.strip_suffix('\n'))
                    .unwrap_or_else(|| panic!("{name}: unexpected stderr {stderr:?}"));
                Err(msg.to_owned())
            }
            other => panic!("{name}: unexpected rc {other:?}"),
        };
        if got == want {
            Ok(())
        } else {
            Err(format!("{name}: got {got:?}, want {want:?}"))
        }
    });
    assert_eq!(n, 17);
}

/// Standard base64 (with padding) — enough for the fixtures, no extra dependency.
fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c:#x}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | val(c) << (18 - 6 * i));
        let take = chunk.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..=take]);
    }
    out
}

#[test]
fn base64_decoder() {
    assert_eq!(base64_decode("ImH/YsMoIg=="), b"\"a\xffb\xc3(\"");
    assert_eq!(base64_decode("IsCvIg=="), b"\"\xc0\xaf\"");
    assert_eq!(base64_decode("eyJr/iI6MX0="), b"{\"k\xfe\":1}");
    assert_eq!(base64_decode("YWJj"), b"abc");
    assert_eq!(base64_decode(""), b"");
}

#[test]
fn raw_bytes_jsonl() {
    let cases = jsonl("raw-bytes.jsonl");
    let n = check_all(&cases, |c| {
        assert_eq!(c.get("rc").and_then(|v| v.as_i64()), Some(0));
        let got = canonical_of(&base64_decode(field(c, "input_base64")));
        let want = field(c, "canonical");
        match got {
            Ok(g) if g == want => Ok(()),
            other => Err(format!(
                "{}: got {other:?}, want {want:?}",
                field(c, "name")
            )),
        }
    });
    assert_eq!(n, 3);
}

/// pvr's commit path loses precision and drops nulls; we deliberately keep the exact value,
/// i.e. the `canonical` column, never `committed`.
#[test]
fn lossy_commit_jsonl_keeps_exact_value() {
    let cases = jsonl("lossy-commit.jsonl");
    let n = check_all(&cases, |c| {
        let got = canonical_of(field(c, "input").as_bytes());
        let want = field(c, "canonical");
        match got {
            Ok(g) if g == want => Ok(()),
            other => Err(format!(
                "{}: got {other:?}, want {want:?}",
                field(c, "name")
            )),
        }
    });
    assert_eq!(n, 15);
}

/// Every accepted vector input: the canonical bytes re-parse to the same value and are a fixed
/// point of parse + to_canonical; the stored-number renderings re-parse to the same value.
#[test]
fn canonical_output_is_a_fixed_point() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for file in ["cases.jsonl", "invalid-input.jsonl", "lossy-commit.jsonl"] {
        inputs.extend(
            jsonl(file)
                .iter()
                .map(|c| field(c, "input").as_bytes().to_vec()),
        );
    }
    inputs.extend(
        jsonl("raw-bytes.jsonl")
            .iter()
            .map(|c| base64_decode(field(c, "input_base64"))),
    );
    let mut checked = 0;
    for input in inputs {
        let Ok(v) = json::parse(&input) else { continue };
        let c = json::to_canonical(&v);
        let back = json::parse(&c).expect("canonical output parses");
        assert_eq!(back, v);
        assert_eq!(json::to_canonical(&back), c);
        assert_eq!(
            json::parse(json::to_pvr_json_pretty(&v).as_bytes()).unwrap(),
            v
        );
        assert_eq!(json::parse(&json::render_checkout(&v)).unwrap(), v);
        checked += 1;
    }
    assert!(checked >= 100, "{checked}");
}

// ---------------------------------------------------------------------------------------------
// Repo cases: renderings of whole states
// ---------------------------------------------------------------------------------------------

fn repo_cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(fixtures().join("repo-renderings"))
        .expect("repo-renderings")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn parse_file(p: &Path) -> Value {
    json::parse(&fs::read(p).expect("read")).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `.pvr/json` snapshots written by commit/get/merge/checkout are canonical (the ones left by
/// `pvr init`, `{ "#spec": ... }` with spaces, are not).
#[test]
fn repo_state_snapshots_are_canonical() {
    let mut n = 0;
    for case in repo_cases() {
        for f in files_under(&case.join("expected")) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with("-json") {
                continue;
            }
            let bytes = fs::read(&f).unwrap();
            if bytes.starts_with(b"{ ") {
                continue; // pvr init's non-canonical text
            }
            let got = json::to_canonical(&parse_file(&f));
            assert_eq!(show(&got), show(&bytes), "{}", f.display());
            n += 1;
        }
    }
    assert!(n >= 40, "{n}");
}

/// `pvr diff` output re-rendered from its own value, and `pvr json` / `json --canonical`.
#[test]
fn repo_diff_and_json_outputs() {
    let (mut diffs, mut pretty, mut compact) = (0, 0, 0);
    for case in repo_cases() {
        for f in files_under(&case.join("expected")) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = fs::read(&f).unwrap();
            if name.ends_with("-diff.txt") {
                if bytes.is_empty() {
                    continue; // diff failed (invalid tracked json)
                }
                let got = json::render_diff(&parse_file(&f));
                assert_eq!(got, show(&bytes), "{}", f.display());
                diffs += 1;
            } else if name.ends_with("-stdout.txt") {
                let v = parse_file(&f);
                if bytes.starts_with(b"{\n") {
                    assert_eq!(
                        json::to_pvr_json_pretty(&v),
                        show(&bytes),
                        "{}",
                        f.display()
                    );
                    pretty += 1;
                } else {
                    let mut got = json::to_canonical(&v);
                    got.push(b'\n');
                    assert_eq!(show(&got), show(&bytes), "{}", f.display());
                    compact += 1;
                }
            }
        }
    }
    assert_eq!((diffs, pretty, compact), (19, 6, 3));
}

/// Case 01 step 05: the first diff (against the `pvr init` state) is the whole working state
/// minus `#spec`, rendered from the *canonical* state of step 07 — so this exercises the
/// float64 number rendering (`2.5E0` → `2.5`, `1.0E-1` → `0.1`) and HTML escaping.
#[test]
fn repo_first_diff_from_canonical_state() {
    let dir = fixtures().join("repo-renderings/01-basic-lifecycle/expected");
    let mut state = parse_file(&dir.join("07-stdout.txt"));
    state.as_object_mut().unwrap().remove("#spec");
    let want = fs::read_to_string(dir.join("05-diff.txt")).unwrap();
    assert_eq!(json::render_diff(&state), want);
}

/// The `(step, dir)` pairs of `steps.md`: "NN. `pvr checkout[ --canonical]` → exit 0; ..."
/// followed by "→ tree saved as expected/DIR/".
fn checkout_steps(case: &Path) -> Vec<(String, bool, String)> {
    let steps = fs::read_to_string(case.join("steps.md")).unwrap();
    let mut out = Vec::new();
    let mut pending: Option<(String, bool)> = None;
    for line in steps.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("→ tree saved as expected/") {
            if let Some((step, canonical)) = pending.take() {
                let dir = rest.split('/').next().unwrap().to_owned();
                out.push((step, canonical, dir));
            }
            continue;
        }
        pending = None;
        if let Some((num, rest)) = t.split_once(". `pvr checkout") {
            if rest.contains("→ exit 0") && num.chars().all(|c| c.is_ascii_digit()) {
                pending = Some((num.to_owned(), rest.starts_with(" --canonical`")));
            }
        }
    }
    out
}

/// Inline `.json` files written by `checkout` (4-space indent, HTML-escaped, canonical
/// numbers, no newline) and `checkout --canonical`, rendered from the state at that step.
#[test]
fn repo_checkout_files() {
    let (mut default, mut canonical, mut raw) = (0, 0, 0);
    for case in repo_cases() {
        for (step, is_canonical, dir) in checkout_steps(&case) {
            let expected = case.join("expected");
            let state = parse_file(&expected.join(format!("{step}-json")));
            let root = expected.join(&dir);
            if !root.exists() {
                continue; // nothing was checked out (empty state)
            }
            for f in files_under(&root) {
                let key = f
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let v = state
                    .get(&key)
                    .unwrap_or_else(|| panic!("{}: {key} not in state {step}", case.display()));
                if json::is_object_id_string(v) {
                    raw += 1; // a raw object: its bytes come from the object store
                    continue;
                }
                let got = if is_canonical {
                    canonical += 1;
                    json::render_checkout_canonical(v)
                } else {
                    default += 1;
                    json::render_checkout(v)
                };
                assert_eq!(show(&got), show(&fs::read(&f).unwrap()), "{}", f.display());
            }
        }
    }
    assert_eq!((default, canonical, raw), (13, 11, 4));
}

#[test]
fn object_id_strings_in_vectors() {
    let cases = jsonl("cases.jsonl");
    let verdict = |name: &str| {
        let c = cases.iter().find(|c| field(c, "name") == name).unwrap();
        json::is_object_id_string(&json::parse(field(c, "input").as_bytes()).unwrap())
    };
    assert!(verdict("top-string-64hex-lower"));
    assert!(verdict("top-string-64hex-upper"));
    assert!(!verdict("top-string-63hex"));
    assert!(!verdict("str-64hex-in-object"));
}
