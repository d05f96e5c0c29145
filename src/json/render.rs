//! The writers: canonical JSON and the renderings pvr prints (table in the `json` module docs).

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum StrStyle {
    /// canonicaljson escapes (uppercase `\u00XX`, nothing else escaped).
    Canonical,
    /// Go `encoding/json` with HTML escaping.
    GoHtml,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NumStyle {
    /// The stored text.
    Stored,
    /// Go's float64 formatting of the stored text.
    GoFloat64,
}

#[derive(Clone, Copy)]
struct Style<'a> {
    /// `None` = compact; `Some(unit)` = Go `json.Indent` layout with this indent unit.
    indent: Option<&'a str>,
    strings: StrStyle,
    numbers: NumStyle,
}

/// Iterative walk: no recursion, so nesting depth cannot overflow the stack here.
fn render(v: &Value, st: Style<'_>, out: &mut Vec<u8>) {
    enum Frame<'v> {
        Arr(std::slice::Iter<'v, Value>, bool),
        Obj(std::vec::IntoIter<(&'v String, &'v Value)>, bool),
    }
    let newline = |out: &mut Vec<u8>, depth: usize| {
        if let Some(unit) = st.indent {
            out.push(b'\n');
            for _ in 0..depth {
                out.extend_from_slice(unit.as_bytes());
            }
        }
    };
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut next = Some(v);
    loop {
        if let Some(v) = next.take() {
            match v {
                Value::Null => out.extend_from_slice(b"null"),
                Value::Bool(true) => out.extend_from_slice(b"true"),
                Value::Bool(false) => out.extend_from_slice(b"false"),
                Value::Number(n) => write_number(&n.to_string(), st.numbers, out),
                Value::String(s) => write_string(s, st.strings, out),
                // Go's Indent keeps empty containers as `[]` / `{}`.
                Value::Array(a) if a.is_empty() => out.extend_from_slice(b"[]"),
                Value::Object(m) if m.is_empty() => out.extend_from_slice(b"{}"),
                Value::Array(a) => {
                    out.push(b'[');
                    stack.push(Frame::Arr(a.iter(), true));
                }
                Value::Object(m) => {
                    out.push(b'{');
                    // Sorted by UTF-8 bytes = code points, whatever the Map's own order.
                    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    stack.push(Frame::Obj(entries.into_iter(), true));
                }
            }
        }
        let depth = stack.len();
        match stack.last_mut() {
            None => return,
            Some(Frame::Arr(it, first)) => match it.next() {
                Some(x) => {
                    if !*first {
                        out.push(b',');
                    }
                    *first = false;
                    newline(out, depth);
                    next = Some(x);
                }
                None => {
                    stack.pop();
                    newline(out, depth - 1);
                    out.push(b']');
                }
            },
            Some(Frame::Obj(it, first)) => match it.next() {
                Some((k, x)) => {
                    if !*first {
                        out.push(b',');
                    }
                    *first = false;
                    newline(out, depth);
                    write_string(k, st.strings, out);
                    out.push(b':');
                    if st.indent.is_some() {
                        out.push(b' ');
                    }
                    next = Some(x);
                }
                None => {
                    stack.pop();
                    newline(out, depth - 1);
                    out.push(b'}');
                }
            },
        }
    }
}

fn write_number(text: &str, style: NumStyle, out: &mut Vec<u8>) {
    match style {
        NumStyle::Stored => out.extend_from_slice(text.as_bytes()),
        NumStyle::GoFloat64 => match go_float64_text(text) {
            Some(t) => out.extend_from_slice(t.as_bytes()),
            None => out.extend_from_slice(text.as_bytes()),
        },
    }
}

fn write_string(s: &str, style: StrStyle, out: &mut Vec<u8>) {
    let hex: &[u8; 16] = match style {
        StrStyle::Canonical => b"0123456789ABCDEF",
        StrStyle::GoHtml => b"0123456789abcdef",
    };
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0; // start of the bytes not yet copied
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0C => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => b"",
        };
        let go_html = style == StrStyle::GoHtml;
        if !short.is_empty() {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(short);
            i += 1;
        } else if c < 0x20 || (go_html && matches!(c, b'<' | b'>' | b'&')) {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(b"\\u00");
            out.push(hex[usize::from(c >> 4)]);
            out.push(hex[usize::from(c & 0xF)]);
            i += 1;
        } else if go_html
            && bytes[i..].starts_with(b"\xE2\x80")
            && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9))
        {
            // U+2028 / U+2029 (E2 80 A8 / E2 80 A9): Go escapes them for JSONP safety.
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(b"\\u202");
            out.push(hex[usize::from(bytes[i + 2] & 0xF)]);
            i += 3;
        } else {
            i += 1;
            continue;
        }
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends pvr's canonical encoding of `v` (what `.pvr/json` and `json --canonical` contain):
/// no whitespace, keys sorted by code point, canonical string escapes, numbers as stored.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    render(
        v,
        Style {
            indent: None,
            strings: StrStyle::Canonical,
            numbers: NumStyle::Stored,
        },
        out,
    );
}

/// A string in canonical JSON (quotes and canonical escapes), as [`write_canonical`] writes it.
pub fn write_canonical_string(s: &str, out: &mut Vec<u8>) {
    write_string(s, StrStyle::Canonical, out);
}

/// pvr's canonical encoding of `v` (see [`write_canonical`]).
pub fn to_canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

/// What `pvr json` prints: the canonical encoding laid out by Go's `json.Indent` with a tab,
/// so strings keep canonical escapes (`<&>` raw) and numbers their canonical text (`2.5E0`),
/// followed by a newline.
pub fn to_pvr_json_pretty(v: &Value) -> String {
    let mut out = Vec::new();
    render(
        v,
        Style {
            indent: Some("\t"),
            strings: StrStyle::Canonical,
            numbers: NumStyle::Stored,
        },
        &mut out,
    );
    out.push(b'\n');
    bytes_to_string(out)
}

/// Go's `json.MarshalIndent(v, "", indent)` (Go ≥ 1.22 escaping, HTML-escaped): with
/// `float64_numbers` numbers are printed as Go prints the nearest `float64` (see
/// [`go_float64_text`]), otherwise as stored (`json.Number`). No trailing newline.
pub fn to_go_indent(v: &Value, indent: &str, float64_numbers: bool) -> String {
    let mut out = Vec::new();
    render(
        v,
        Style {
            indent: Some(indent),
            strings: StrStyle::GoHtml,
            numbers: if float64_numbers {
                NumStyle::GoFloat64
            } else {
                NumStyle::Stored
            },
        },
        &mut out,
    );
    bytes_to_string(out)
}

/// What `pvr diff` prints for the merge patch `patch`: tab-indented, HTML-escaped, numbers via
/// float64 (`2.5E0` → `2.5`), followed by a newline (`{}\n` when nothing changed).
pub fn render_diff(patch: &Value) -> String {
    let mut s = to_go_indent(patch, "\t", true);
    s.push('\n');
    s
}

/// The bytes the default `pvr checkout` writes for an inline JSON value: 4-space indent,
/// HTML-escaped, numbers as stored canonical text, no trailing newline.
pub fn render_checkout(v: &Value) -> Vec<u8> {
    to_go_indent(v, "    ", false).into_bytes()
}

/// The bytes `pvr checkout --canonical` writes for an inline JSON value (no trailing newline).
pub fn render_checkout_canonical(v: &Value) -> Vec<u8> {
    to_canonical(v)
}

/// Our writers only emit valid UTF-8 (they copy `str` data and ASCII); the lossy conversion
/// is a no-op that avoids an `unwrap`.
fn bytes_to_string(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
