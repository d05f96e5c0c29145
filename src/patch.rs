//! Diffs between states and applying them.
//!
//! Two formats: pvr's RFC 7396 JSON merge patch (what `pvr diff` prints; cannot express `null`
//! values, which it reads as "delete") and RFC 6902 JSON Patch (exact; what pvrfs stores as the
//! diff of each revision and prints with `--format rfc6902`). Both are computed on the states'
//! JSON values; top-level keys are paths, so JSON Pointers escape their `/` as `~1`.

use crate::error::{Error, Result};
use crate::json::Value;
use crate::state::{Entry, State};

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

/// The RFC 6902 patch between two states, as a JSON array value. One ordered walk over both
/// states' entries (cost O(entries) without copying them; only changed inline values are
/// diffed deeply), so a commit that changes 10 files of 100k stays cheap.
pub fn state_json_patch(old: &State, new: &State) -> Value {
    fn pointer(key: &str) -> String {
        format!("/{}", key.replace('~', "~0").replace('/', "~1"))
    }
    fn op(kind: &str, path: String, value: Option<Value>) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("op".into(), Value::String(kind.into()));
        m.insert("path".into(), Value::String(path));
        if let Some(v) = value {
            m.insert("value".into(), v);
        }
        Value::Object(m)
    }
    let mut ops = Vec::new();
    let spec_ptr = pointer(crate::state::SPEC_KEY);
    match (&old.spec, &new.spec) {
        (None, None) => {}
        (a, b) if a == b => {}
        (Some(_), None) => ops.push(op("remove", spec_ptr, None)),
        (None, Some(s)) => ops.push(op("add", spec_ptr, Some(Value::String(s.clone())))),
        (Some(_), Some(s)) => ops.push(op("replace", spec_ptr, Some(Value::String(s.clone())))),
    }
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (k, _) = a.next().expect("peeked");
                ops.push(op("remove", pointer(k), None));
            }
            std::cmp::Ordering::Greater => {
                let (k, e) = b.next().expect("peeked");
                ops.push(op("add", pointer(k), Some(e.to_value())));
            }
            std::cmp::Ordering::Equal => {
                let ((k, ea), (_, eb)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                if ea == eb {
                    continue;
                }
                match (ea, eb) {
                    (Entry::Inline(va), Entry::Inline(vb)) => {
                        let prefix = pointer(k);
                        let inner = json_patch::diff(va, vb);
                        let Value::Array(inner) =
                            serde_json::to_value(inner).expect("a JSON Patch serialises")
                        else {
                            unreachable!("a JSON Patch is an array")
                        };
                        for mut o in inner {
                            if let Some(Value::String(p)) = o.get_mut("path") {
                                *p = format!("{prefix}{p}");
                            }
                            if let Some(Value::String(p)) = o.get_mut("from") {
                                *p = format!("{prefix}{p}");
                            }
                            ops.push(o);
                        }
                    }
                    _ => ops.push(op("replace", pointer(k), Some(eb.to_value()))),
                }
            }
        }
    }
    Value::Array(ops)
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

/// Apply a patch document to a state's value; the result is validated as a state.
pub fn apply_to_state(base: &State, doc: &Value, origin: &str) -> Result<State> {
    let mut value = base.to_value();
    match detect_format(doc)? {
        PatchFormat::MergePatch => json_patch::merge(&mut value, doc),
        PatchFormat::JsonPatch => {
            let patch: json_patch::Patch = serde_json::from_value(doc.clone()).map_err(|e| {
                Error::Conflict(format!("{origin} is not a valid RFC 6902 patch: {e}"))
            })?;
            json_patch::patch(&mut value, &patch)
                .map_err(|e| Error::Conflict(format!("{origin} does not apply: {e}")))?;
        }
    }
    State::from_value(value, origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    fn v(text: &str) -> Value {
        json::parse(text.as_bytes()).unwrap()
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
    fn json_patch_edits_inline_values_in_place_and_round_trips() {
        let id = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let old = State::from_value(
            v(&format!(
                r##"{{"#spec":"a","!x":"{id}","c.json":{{"k":[1,2],"m":{{"a/b":1}}}},"gone":"{id}","t~1.json":3}}"##
            )),
            "t",
        )
        .unwrap();
        let new = State::from_value(
            v(&format!(
                r##"{{"#spec":"b","c.json":{{"k":[1,3],"m":{{"a/b":null}}}},"new":"{id}","t~1.json":"{id}"}}"##
            )),
            "t",
        )
        .unwrap();
        let p = state_json_patch(&old, &new);
        assert!(p.to_string().contains("/c.json/k/1"), "{p}");
        assert_eq!(apply_to_state(&old, &p, "p").unwrap(), new);
        assert_eq!(
            apply_to_state(&new, &state_json_patch(&new, &old), "p").unwrap(),
            old
        );
        assert_eq!(state_json_patch(&old, &old), v("[]"));
    }

    #[test]
    fn bad_patches_fail_cleanly() {
        let s = State::empty("s");
        assert!(apply_to_state(&s, &v("3"), "p").is_err());
        assert!(apply_to_state(&s, &v(r#"[{"op":"remove","path":"/nope"}]"#), "p").is_err());
        assert!(apply_to_state(&s, &v(r#"{"../x":"y"}"#), "p").is_err());
    }
}
