//! JSON values as pvr sees them: parsing, canonical numbers and the four renderings pvr prints.
//!
//! # Model
//!
//! A [`Value`] is a plain `serde_json::Value` (the crate enables `arbitrary_precision`, so a
//! `serde_json::Number` is stored as text). **Invariant:** every `Value::Number` produced by this
//! module holds the *canonical* text of its number (see [`canonical_number`]), so two values
//! compare equal with `==` exactly when they are semantically equal: `1e3`, `1000` and `1000.0`
//! all become `1000`, `2.50` and `0.25e1` both become `2.5E0`. Numbers never pass through `f64`
//! on the way in, so `12345678901234567890`, `1e400` and `1e-400` survive exactly. Values built
//! elsewhere (`serde_json::json!`, `Value::from(1.5)`, `serde_json::from_slice`) do not follow the
//! invariant until passed through [`normalize_numbers`].
//!
//! # Parsing ([`parse`])
//!
//! pvr reads an inline `.json` file with Go's `json.Decoder.Decode`; [`parse`] reproduces what that
//! accepts and the exact error text it produces (the vectors in `tests/fixtures/canonical-json`):
//!
//! * only the *first* JSON value is read and anything after it is ignored (`{} x` → `{}`,
//!   `01` → `0`, `0x10` → `0`); empty or whitespace-only input is the error `EOF`, input that ends
//!   inside a value is `unexpected EOF`; whitespace is space, tab, CR and LF only;
//! * syntax errors carry Go's `encoding/json` scanner messages, e.g.
//!   `invalid character '\'' looking for beginning of object key string`;
//! * invalid UTF-8 inside strings (keys included) is replaced the way Go does it: one U+FFFD for
//!   every byte at which decoding fails (so an overlong `C0 AF` gives two U+FFFD);
//! * `\u` escapes are decoded, surrogate pairs combined, a lone surrogate becomes U+FFFD;
//! * duplicate object keys: the last one wins;
//! * nesting deeper than [`MAX_DEPTH`] is refused with Go's wording,
//!   `invalid character '[' exceeded max depth`. Go's limit is 10 000; ours is **512** on purpose:
//!   the parser and the writers here are iterative, but `serde_json::Value`'s own `Clone`,
//!   `PartialEq` and `Drop` recurse, and at depth 10 000 they overflow a 2 MiB thread stack
//!   (measured: `clone` fails past ~1 000 levels in debug builds, and even in release at 10 000).
//!   Real state files nest a handful of levels.
//!
//! **Invariant (bounded nesting):** no `Value` in pvrfs nests deeper than [`MAX_DEPTH`]. Every
//! producer enforces it: [`parse`] refuses deeper input, `patch::apply_to_state` refuses an
//! operation before it would build a deeper value (and caps what `copy` operations may
//! duplicate), and `State` refuses an inline value that would nest the state deeper
//! ([`nesting_depth`]). So the recursive walks that remain — `serde_json::Value`'s `Clone`,
//! `PartialEq` and `Drop`, `json_patch::diff`/`merge`, `patch::merge_diff` — are bounded by
//! [`MAX_DEPTH`] frames; the walks written here ([`nesting_depth`], [`count_values`],
//! [`normalize_numbers`], the writers) are iterative.
//!
//! One deliberate addition to Go's behaviour: a number whose canonical form would be an integer
//! expanded by more than [`MAX_CANONICAL_DIGITS`] digits (`1e999999999`), or whose exponent is
//! beyond ±10^30, is refused with [`SyntaxError::Number`] instead of allocating gigabytes.
//!
//! # Renderings
//!
//! | function | what pvr does | strings | numbers | layout |
//! |---|---|---|---|---|
//! | [`to_canonical`] / [`write_canonical`] | `json --canonical`, `.pvr/json` | canonical escapes | canonical text | compact, keys sorted |
//! | [`render_checkout_canonical`] | `checkout --canonical` | canonical escapes | canonical text | compact |
//! | [`to_pvr_json_pretty`] | `json` (= Go `json.Indent` of the canonical bytes) | canonical escapes, `<&>` raw | canonical text (`2.5E0`) | tab indent, trailing `\n` |
//! | [`render_diff`] | `diff` (Go `json.Marshal` of float64 values, then `json.Indent`) | Go escapes, HTML-escaped | Go float64 (`2.5`, `0.1`) | tab indent, trailing `\n` |
//! | [`render_checkout`] | default `checkout` (Go `json.MarshalIndent` of a `json.Number` tree) | Go escapes, HTML-escaped | canonical text (`2.5E0`) | 4-space indent, no trailing newline |
//!
//! *Decision on checkout numbers:* the vectors show the default checkout writes `2.5E0` and `1.5E0`
//! (repo-cases 01, 07, 08), i.e. the stored canonical text, **not** a float64 rendering; so
//! [`render_checkout`] prints numbers as stored. Only [`render_diff`] goes through `f64`, because
//! pvr's diff decodes both states into float64 (`2.5E0` → `2.5`, `9007199254740993` →
//! `9007199254740992`). A number that overflows `f64` (pvr's diff would fail on it) is printed
//! by [`render_diff`] as its canonical text instead.
//!
//! "Go escapes" is Go ≥ 1.22 `encoding/json`: `"` `\` `\b` `\f` `\n` `\r` `\t` short, other C0
//! controls `\u00xx` with *lowercase* hex, `<` `>` `&` as `\u003c` `\u003e` `\u0026`, U+2028/U+2029
//! as `\u2028`/`\u2029`, everything else raw (DEL included). The vectors contain no `\b`/`\f`
//! in a diff or checkout; Go before 1.22 wrote them as `\u0008`/`\u000c`, we assume a current Go. "Canonical escapes" are the same short
//! escapes for `"` `\` `\b` `\f` `\n` `\r` `\t`, other C0 controls as `\u00XX` with *uppercase*
//! hex, and everything else raw (`<&>`, U+2028, DEL, non-ASCII).
//!
//! pvr's commit path also drops `null`s and rounds numbers through float64 (see the vectors'
//! `lossy-commit.jsonl`); this module deliberately does not reproduce that.

/// A JSON value. See the module docs for the canonical-number invariant.
pub type Value = serde_json::Value;

type Map = serde_json::Map<String, Value>;

/// Deepest nesting of arrays/objects accepted by [`parse`]. Go's `maxNestingDepth` is 10 000;
/// see the module docs for why ours is lower.
pub const MAX_DEPTH: usize = 512;

/// [`canonical_number`] refuses an integral number whose canonical digits would have to be
/// expanded (zeros appended for a positive exponent) beyond this many digits.
pub const MAX_CANONICAL_DIGITS: usize = 10_000;

/// Exponents (after adjustment for the digits) beyond ±10^30 are refused.
const MAX_EXPONENT_DIGITS: usize = 30;

/// A number [`canonical_number`] cannot (or will not) convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// The text is not a JSON number.
    #[error("invalid JSON number {0:?}")]
    Invalid(String),
    /// The canonical form would need more than [`MAX_CANONICAL_DIGITS`] digits.
    #[error("number {0} too large: its canonical form would exceed {MAX_CANONICAL_DIGITS} digits")]
    TooLarge(String),
    /// The exponent is beyond what this implementation handles (±10^30).
    #[error("number {0} has an exponent out of range")]
    ExponentOutOfRange(String),
}

/// The number text as quoted in errors: at most 40 characters, so that a 20 000-digit number
/// does not end up in an error message.
fn excerpt(text: &str) -> String {
    if text.chars().count() <= 40 {
        text.to_owned()
    } else {
        let head: String = text.chars().take(32).collect();
        format!("{head}...")
    }
}

/// Why [`parse`] refused its input. `Display` is exactly Go's `encoding/json` error text
/// (what pvr prints after `JSON Unmarshal (<path>): `), except for the [`SyntaxError::Number`]
/// extension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// No value at all: empty or whitespace-only input.
    #[error("EOF")]
    Eof,
    /// The input ends inside a value.
    #[error("unexpected EOF")]
    UnexpectedEof,
    /// Go's scanner rejected `byte` at `offset` (0-based); `context` is Go's wording, e.g.
    /// `looking for beginning of value`.
    #[error("invalid character {} {context}", quote_char(*.byte))]
    InvalidCharacter {
        byte: u8,
        context: &'static str,
        offset: usize,
    },
    /// A syntactically valid number this implementation refuses (not a Go error).
    #[error("{0}")]
    Number(NumberError),
}

/// Go's `quoteChar`: the byte taken as a code point (so `0xEF` is `'ï'`), quoted like
/// `strconv.Quote` but between single quotes.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_owned(),
        b'"' => "'\"'".to_owned(),
        _ => {
            let esc = match c {
                0x07 => r"\a".to_owned(),
                0x08 => r"\b".to_owned(),
                0x0C => r"\f".to_owned(),
                b'\n' => r"\n".to_owned(),
                b'\r' => r"\r".to_owned(),
                b'\t' => r"\t".to_owned(),
                0x0B => r"\v".to_owned(),
                b'\\' => r"\\".to_owned(),
                0x00..=0x1F | 0x7F => format!(r"\x{c:02x}"),
                // strconv.IsPrint for Latin-1: C1 controls, NBSP and soft hyphen are not printable.
                0x80..=0xA0 | 0xAD => format!(r"\u{c:04x}"),
                _ => char::from(c).to_string(),
            };
            format!("'{esc}'")
        }
    }
}

/// True for a JSON string of exactly 64 hex digits (either case): the shape of an object id,
/// which pvr's state layer treats as a reference rather than an inline value.
pub fn is_object_id_string(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How deeply `v` nests: 0 for a scalar, 1 for `[]` or `{}`, one more per level inside, the
/// way [`parse`] counts against [`MAX_DEPTH`]. Iterative; stops counting (returns `limit + 1`)
/// as soon as the depth exceeds `limit`, so a check costs no more than the part it looks at.
pub fn nesting_depth(v: &Value, limit: usize) -> usize {
    let mut deepest = 0;
    let mut todo: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, above)) = todo.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(m) => Box::new(m.values()),
            _ => continue,
        };
        let depth = above + 1;
        if depth > limit {
            return limit + 1;
        }
        deepest = deepest.max(depth);
        todo.extend(children.map(|c| (c, depth)));
    }
    deepest
}

/// How many values `v` holds, itself included (every scalar, array and object counts one).
/// Iterative.
pub fn count_values(v: &Value) -> usize {
    let mut n = 0;
    let mut todo: Vec<&Value> = vec![v];
    while let Some(v) = todo.pop() {
        n += 1;
        match v {
            Value::Array(a) => todo.extend(a.iter()),
            Value::Object(m) => todo.extend(m.values()),
            _ => {}
        }
    }
    n
}

mod number;
mod parse;
mod render;
#[cfg(test)]
mod tests;

pub use number::*;
pub use parse::*;
pub use render::*;
