//! Diffs between states and applying them.
//!
//! Two formats: pvr's RFC 7396 JSON merge patch (what `pvr diff` prints; cannot express `null`
//! values, which it reads as "delete") and RFC 6902 JSON Patch (exact; what pvrfs stores as the
//! diff of each revision and prints with `--format rfc6902`). Both are computed on the states'
//! JSON values; top-level keys are paths, so JSON Pointers escape their `/` as `~1`.

use crate::error::{Error, Result};
use crate::json::{self, Value};
use crate::state::{Entry, State, SPEC_KEY};

/// RFC 7396 merge patch turning `old` into `new`; `{}` when they are equal.
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    merge_diff_inner(old, new).unwrap_or_else(|| Value::Object(Default::default()))
}

fn merge_diff_inner(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, ov) in o {
                match n.get(k) {
                    None => {
                        out.insert(k.clone(), Value::Null);
                    }
                    Some(nv) => {
                        if let Some(d) = merge_diff_inner(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                }
            }
            for (k, nv) in n {
                if !o.contains_key(k) {
                    out.insert(k.clone(), nv.clone());
                }
            }
            Some(Value::Object(out))
        }
        _ => Some(new.clone()),
    }
}

/// The merge patch between two states.
pub fn state_merge_diff(old: &State, new: &State) -> Value {
    merge_diff(&old.to_value(), &new.to_value())
}

/// The RFC 6902 patch between two states, as a JSON array value.
///
/// Walks both entry maps in lockstep (they are sorted), so the cost is one comparison per path
/// and a clone only of what changed, never a copy of the whole tree.
pub fn state_json_patch(old: &State, new: &State) -> Value {
    use std::cmp::Ordering;
    let mut ops = Vec::new();
    let op = |name: &str, key: &str, value: Option<Value>| {
        let mut m = serde_json::Map::new();
        m.insert("op".into(), Value::String(name.into()));
        m.insert("path".into(), Value::String(pointer(key)));
        if let Some(v) = value {
            m.insert("value".into(), v);
        }
        Value::Object(m)
    };
    if old.spec != new.spec {
        match (&old.spec, &new.spec) {
            (_, Some(s)) => ops.push(op(
                if old.spec.is_some() { "replace" } else { "add" },
                SPEC_KEY,
                Some(Value::String(s.clone())),
            )),
            (Some(_), None) => ops.push(op("remove", SPEC_KEY, None)),
            (None, None) => {}
        }
    }
    // Metadata documents are diffed like any inline file: that is how pvr sees them.
    let mut a = old.iter_with_docs().peekable();
    let mut b = new.iter_with_docs().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                let (k, _) = a.next().expect("peeked");
                ops.push(op("remove", k, None));
            }
            Ordering::Greater => {
                let (k, e) = b.next().expect("peeked");
                ops.push(op("add", k, Some(e.to_value())));
            }
            Ordering::Equal => {
                let (k, ea) = a.next().expect("peeked");
                let (_, eb) = b.next().expect("peeked");
                match (ea, eb) {
                    _ if ea == eb => {}
                    (Entry::Inline(va), Entry::Inline(vb)) if both_containers(va, vb) => {
                        let inner = serde_json::to_value(json_patch::diff(va, vb))
                            .expect("a JSON Patch serialises");
                        let prefix = pointer(k);
                        if let Value::Array(inner_ops) = inner {
                            for mut o in inner_ops {
                                prefix_paths(&mut o, &prefix);
                                ops.push(o);
                            }
                        }
                    }
                    _ => ops.push(op("replace", k, Some(eb.to_value()))),
                }
            }
        }
    }
    Value::Array(ops)
}

fn both_containers(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_))
    )
}

/// The JSON Pointer of a top-level key (RFC 6901 escaping: `~` → `~0`, `/` → `~1`).
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn prefix_paths(op: &mut Value, prefix: &str) {
    if let Value::Object(m) = op {
        for field in ["path", "from"] {
            if let Some(Value::String(p)) = m.get_mut(field) {
                *p = format!("{prefix}{p}");
            }
        }
    }
}

/// Which format a patch document is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    MergePatch,
    JsonPatch,
}

/// An array is an RFC 6902 patch, an object a merge patch.
pub fn detect_format(doc: &Value) -> Result<PatchFormat> {
    match doc {
        Value::Array(_) => Ok(PatchFormat::JsonPatch),
        Value::Object(_) => Ok(PatchFormat::MergePatch),
        _ => Err(Error::Usage(
            "a patch must be a JSON object (RFC 7396 merge patch) or array (RFC 6902 JSON Patch)"
                .into(),
        )),
    }
}

/// Apply a patch document to a state's value; the result is validated as a state (keys,
/// ids, file/directory clashes, nesting) before anything can be committed.
///
/// A patch is untrusted input that can *build* values, not just describe them: RFC 6902
/// `copy` duplicates a value, also into itself, so a short patch could nest a value tens of
/// thousands of levels deep (serde_json's recursive `Drop`/`Clone` then overflow the stack)
/// or double its size with every operation. So RFC 6902 operations are applied one at a time,
/// each checked *before* it runs: the value it places may not make the state nest deeper than
/// `json::MAX_DEPTH`, and all `copy` operations together may duplicate at most as many values
/// as the base state and the patch hold (at least [`MIN_COPY_BUDGET`]). A merge patch only
/// places values it holds, so it cannot nest deeper than itself; its result is checked as a
/// state like any other.
pub fn apply_to_state(base: &State, doc: &Value, origin: &str) -> Result<State> {
    let mut value = base.to_value();
    match detect_format(doc)? {
        PatchFormat::MergePatch => json_patch::merge(&mut value, doc),
        PatchFormat::JsonPatch => {
            let ops = json_patch_ops(doc, origin)?;
            let budget =
                (json::count_values(&value) + json::count_values(doc)).max(MIN_COPY_BUDGET);
            apply_json_patch(&mut value, &ops, budget, origin)?;
        }
    }
    // Values that went through serde (the Patch above) lose the canonical number text
    // (`2.5E0` comes back as `2.5e+0`): restore the invariant of `json`.
    json::normalize_numbers(&mut value);
    State::from_value(value, origin)
}

/// The operations of an RFC 6902 patch document (an array), read straight from its value.
///
/// Not through serde: with `arbitrary_precision`, `serde_json::from_value` refuses integers
/// beyond 128 bits (`77777777777777777777777777770`: "invalid type: integer … as u128"), so a
/// patch carrying a number that a state holds exactly (`diff --format rfc6902` prints such
/// patches) would not apply. Found by fuzzing (`fuzz/regressions/patch_apply/`).
fn json_patch_ops(doc: &Value, origin: &str) -> Result<Vec<json_patch::PatchOperation>> {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::*;
    let Value::Array(items) = doc else {
        return Err(Error::Conflict(format!(
            "{origin} is not a valid RFC 6902 patch: not an array"
        )));
    };
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let bad = |why: String| {
            Error::Conflict(format!(
                "{origin} is not a valid RFC 6902 patch: operation {i}: {why}"
            ))
        };
        let Value::Object(m) = item else {
            return Err(bad("not an object".into()));
        };
        let pointer = |name: &str| {
            let text = m
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("no \"{name}\" string")))?;
            PointerBuf::parse(text).map_err(|e| bad(format!("\"{name}\": {e}")))
        };
        let value = || {
            m.get("value")
                .cloned()
                .ok_or_else(|| bad("no \"value\"".into()))
        };
        let op = m
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"op\" string".into()))?;
        ops.push(match op {
            "add" => PatchOperation::Add(AddOperation {
                path: pointer("path")?,
                value: value()?,
            }),
            "remove" => PatchOperation::Remove(RemoveOperation {
                path: pointer("path")?,
            }),
            "replace" => PatchOperation::Replace(ReplaceOperation {
                path: pointer("path")?,
                value: value()?,
            }),
            "move" => PatchOperation::Move(MoveOperation {
                from: pointer("from")?,
                path: pointer("path")?,
            }),
            "copy" => PatchOperation::Copy(CopyOperation {
                from: pointer("from")?,
                path: pointer("path")?,
            }),
            "test" => PatchOperation::Test(TestOperation {
                path: pointer("path")?,
                value: value()?,
            }),
            other => return Err(bad(format!("unknown op '{other}'"))),
        });
    }
    Ok(ops)
}

/// The least number of values the `copy` operations of one patch may duplicate, however small
/// the base state is (see [`apply_to_state`]).
pub const MIN_COPY_BUDGET: usize = 1 << 20;

/// Apply RFC 6902 operations in order, refusing one before it would nest the document deeper
/// than `json::MAX_DEPTH` or copy more than `copy_budget` values in all. On error `value` is
/// half-patched: callers work on a copy and drop it.
fn apply_json_patch(
    value: &mut Value,
    ops: &[json_patch::PatchOperation],
    mut copy_budget: usize,
    origin: &str,
) -> Result<()> {
    use json_patch::PatchOperation as Op;
    for (i, op) in ops.iter().enumerate() {
        let (name, placed_depth) = match op {
            Op::Add(o) => ("add", Some(json::nesting_depth(&o.value, json::MAX_DEPTH))),
            Op::Replace(o) => (
                "replace",
                Some(json::nesting_depth(&o.value, json::MAX_DEPTH)),
            ),
            Op::Move(o) => (
                "move",
                value
                    .pointer(o.from.as_str())
                    .map(|v| json::nesting_depth(v, json::MAX_DEPTH)),
            ),
            Op::Copy(o) => match value.pointer(o.from.as_str()) {
                Some(source) => {
                    let copied = json::count_values(source);
                    if copied > copy_budget {
                        return Err(Error::CorruptState {
                            origin: origin.to_string(),
                            detail: format!(
                                "operation {i} (copy from {} to {}) would copy {copied} values, \
                                 more than the {copy_budget} left of what this patch may \
                                 duplicate (as many values as the state and the patch hold); \
                                 refused",
                                o.from, o.path
                            ),
                        });
                    }
                    copy_budget -= copied;
                    ("copy", Some(json::nesting_depth(source, json::MAX_DEPTH)))
                }
                None => ("copy", None), // json_patch reports the bad `from`
            },
            Op::Remove(_) => ("remove", None),
            Op::Test(_) => ("test", None),
        };
        let path = op.path();
        if let Some(depth) = placed_depth {
            // Each reference token of the target is one level of nesting above the value.
            let levels = path.as_str().matches('/').count() + depth;
            if levels > json::MAX_DEPTH {
                let key = path
                    .tokens()
                    .next()
                    .map_or_else(String::new, |t| t.decoded().into_owned());
                return Err(Error::BadEntry {
                    origin: origin.to_string(),
                    key,
                    reason: format!(
                        "operation {i} ({name} at {path}) would nest the state more than {} levels deep",
                        json::MAX_DEPTH
                    ),
                });
            }
        }
        json_patch::patch_unsafe(value, std::slice::from_ref(op)).map_err(|e| {
            Error::Conflict(format!(
                "{origin} does not apply: operation {i} ({name} at {path}): {}",
                e.kind
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Value {
        json::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn applying_a_json_patch_keeps_canonical_numbers() {
        let base = State::from_value(v(r##"{"#spec":"s@1","a.json":{"x":1}}"##), "t").unwrap();
        let new = State::from_value(v(r##"{"#spec":"s@1","a.json":{"x":2.5}}"##), "t").unwrap();
        let patch = state_json_patch(&base, &new);
        assert_eq!(apply_to_state(&base, &patch, "t").unwrap(), new);
    }

    #[test]
    fn merge_diff_reports_changes_deletions_and_nested_edits() {
        let old = v(r#"{"a":1,"b":{"x":1,"y":2},"c":3}"#);
        let new = v(r#"{"a":1,"b":{"x":1,"y":5},"d":4}"#);
        let d = merge_diff(&old, &new);
        assert_eq!(d, v(r#"{"b":{"y":5},"c":null,"d":4}"#));
        let mut patched = old.clone();
        json_patch::merge(&mut patched, &d);
        assert_eq!(patched, new);
        assert_eq!(merge_diff(&old, &old), v("{}"));
    }

    #[test]
    fn json_patch_round_trips_states_with_slashes_and_nulls() {
        let id = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let old =
            State::from_value(v(&format!(r##"{{"#spec":"s","d/a.txt":"{id}"}}"##)), "t").unwrap();
        let new = State::from_value(
            v(&format!(
                r##"{{"#spec":"s","d/b.txt":"{id}","n.json":{{"k":null}}}}"##
            )),
            "t",
        )
        .unwrap();
        let p = state_json_patch(&old, &new);
        assert!(p.to_string().contains("/d~1b.txt"), "{p}");
        assert_eq!(apply_to_state(&old, &p, "p").unwrap(), new);
        // a merge patch cannot carry the null: it deletes instead
        let m = state_merge_diff(&old, &new);
        let via_merge = apply_to_state(&old, &m, "m").unwrap();
        assert_ne!(via_merge, new);
    }

    #[test]
    fn json_patch_walk_handles_every_kind_of_change() {
        let id = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let id2 = "0f15384d18789b1ebf3043dc7b6bc27273c8576373fbeb6f3e15854b588141c0";
        let old = State::from_value(
            v(&format!(
                r##"{{"#spec":"s","a~b":"{id}","c.json":{{"x":[1,2],"y":{{"z":1}}}},"d.json":[1],"gone":"{id}","keep":"{id}","raw.json":"{id}"}}"##
            )),
            "t",
        )
        .unwrap();
        let new = State::from_value(
            v(&format!(
                r##"{{"#spec":"t","a~b":"{id2}","c.json":{{"x":[1,3],"y":{{}}}},"d.json":{{"k":1}},"keep":"{id}","new/f":"{id}","raw.json":{{"v":1}}}}"##
            )),
            "t",
        )
        .unwrap();
        let p = state_json_patch(&old, &new);
        assert!(p.to_string().contains("/a~0b"), "{p}");
        assert!(p.to_string().contains("/c.json/x/1"), "{p}");
        assert_eq!(apply_to_state(&old, &p, "p").unwrap(), new);
        assert_eq!(
            apply_to_state(&new, &state_json_patch(&new, &old), "p").unwrap(),
            old
        );
        assert_eq!(state_json_patch(&old, &old), v("[]"));
    }

    /// The nesting check counts the target's reference tokens plus the placed value's depth,
    /// exactly as the parser counts a state's nesting.
    #[test]
    fn operations_that_would_nest_too_deep_are_refused_before_they_run() {
        let base = State::from_value(v(r#"{"a.json":{}}"#), "t").unwrap();
        // Built in code: a patch document holding them would itself be too deep to parse.
        let nested = |n: usize| (0..n).fold(Value::Null, |inner, _| Value::Array(vec![inner]));
        let add = |value: Value| {
            let mut op = serde_json::Map::new();
            op.insert("op".into(), Value::String("add".into()));
            op.insert("path".into(), Value::String("/a.json/x".into()));
            op.insert("value".into(), value);
            Value::Array(vec![Value::Object(op)])
        };
        // `/a.json/x` is two tokens: a value of depth 510 reaches 512 levels.
        let s = apply_to_state(&base, &add(nested(510)), "p").unwrap();
        assert_eq!(
            s.to_canonical_bytes().len(),
            2 * 510 + r#"{"a.json":{"x":null}}"#.len()
        );
        let err = apply_to_state(&base, &add(nested(511)), "p")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'a.json'") && err.contains("operation 0 (add"),
            "{err}"
        );
        // Moving the deep value one level down is refused too.
        let mv = r#"[{"op":"add","path":"/b.json","value":{}},{"op":"move","from":"/a.json","path":"/b.json/y"}]"#;
        let s = apply_to_state(&s, &v(mv), "p").unwrap_err().to_string();
        assert!(s.contains("operation 1 (move"), "{s}");
        // An inline value too deep for a state is refused by `State` itself.
        let mut st = State::empty("s");
        let too_deep = nested(512);
        let err = st.insert("x.json", Entry::Inline(too_deep)).unwrap_err();
        assert!(err.to_string().contains("levels deep"), "{err}");
    }

    /// Found by fuzzing: an RFC 6902 patch carrying an integer beyond 128 bits did not apply
    /// ("invalid type: integer … as u128"), so neither did our own diff of such a state.
    #[test]
    fn patches_carry_integers_of_any_size() {
        let base = State::from_value(v(r#"{"a.json":{"k":1}}"#), "t").unwrap();
        let big = "77777777777777777777777777770";
        let new = State::from_value(v(&format!(r#"{{"a.json":{{"k":{big}}}}}"#)), "t").unwrap();
        let p = state_json_patch(&base, &new);
        assert!(p.to_string().contains(big), "{p}");
        assert_eq!(apply_to_state(&base, &p, "p").unwrap(), new);
        let add = v(&format!(
            r#"[{{"op":"add","path":"/b.json","value":[-{big}9,2.50]}}]"#
        ));
        let got = apply_to_state(&base, &add, "p").unwrap();
        assert_eq!(
            String::from_utf8(got.to_canonical_bytes()).unwrap(),
            format!(r#"{{"a.json":{{"k":1}},"b.json":[-{big}9,2.5E0]}}"#)
        );
        let err = apply_to_state(&base, &v(r#"[{"op":"jump","path":"/x"}]"#), "p").unwrap_err();
        assert!(
            err.to_string().contains("operation 0: unknown op 'jump'"),
            "{err}"
        );
        let err = apply_to_state(&base, &v(r#"[{"op":"add","path":"x","value":1}]"#), "p");
        assert!(err.unwrap_err().to_string().contains("\"path\""));
    }

    /// Metadata documents diff like any inline file, apply as patches, and a patch that
    /// makes them invalid is refused naming the path.
    #[test]
    fn metadata_documents_diff_and_apply() {
        let id = crate::oid::ObjectId::hash_bytes(b"x");
        let old =
            State::from_json_bytes(format!(r#"{{"run.sh":"{id}"}}"#).as_bytes(), "o").unwrap();
        let new = State::from_json_bytes(
            format!(r#"{{"run.sh":"{id}",".pvrfs-meta.json":{{"modes":{{"run.sh":"0755"}}}}}}"#)
                .as_bytes(),
            "n",
        )
        .unwrap();
        let merge = state_merge_diff(&old, &new);
        assert_eq!(
            merge,
            v(r#"{".pvrfs-meta.json":{"modes":{"run.sh":"0755"}}}"#)
        );
        for p in [merge, state_json_patch(&old, &new)] {
            assert_eq!(apply_to_state(&old, &p, "p").unwrap(), new);
        }
        let bad = v(r#"{".pvrfs-meta.json":{"links":{"run.sh":"x"}}}"#);
        let err = apply_to_state(&old, &bad, "p").unwrap_err();
        assert!(matches!(err, Error::BadMeta { .. }), "{err}");
        assert!(err.to_string().contains("'run.sh'"), "{err}");
    }

    #[test]
    fn bad_patches_fail_cleanly() {
        let s = State::empty("s");
        assert!(apply_to_state(&s, &v("3"), "p").is_err());
        assert!(apply_to_state(&s, &v(r#"[{"op":"remove","path":"/nope"}]"#), "p").is_err());
        assert!(apply_to_state(&s, &v(r#"{"../x":"y"}"#), "p").is_err());
    }
}
