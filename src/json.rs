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

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// Parses the first JSON value of `bytes` like Go's `json.Decoder.Decode` (see module docs).
/// Numbers are stored as their canonical text. Never panics.
pub fn parse(bytes: &[u8]) -> Result<Value, SyntaxError> {
    Parser { b: bytes, pos: 0 }.parse_document()
}

/// One member value of a top-level object read by [`parse_object_members`].
#[derive(Debug, Clone, PartialEq)]
pub enum MemberValue {
    /// A string of exactly 64 lowercase hex digits without escapes, decoded straight to an id
    /// (never materialised as a `String`: the common case of a state entry).
    Id(crate::oid::ObjectId),
    /// Anything else, parsed as by [`parse`].
    Value(Value),
}

/// Parses `bytes` like [`parse`] when its first value is an object, returning that object's
/// members in input order (duplicates kept: the caller decides, last one wins in [`parse`]).
/// `Ok(None)` when the first value is not an object (call [`parse`] for it). Any syntax error
/// anywhere in the object is returned before a single member is, as [`parse`] does.
///
/// Made for loading a state: no map of all members is built, and object-id strings skip the
/// `String` and the later hex re-validation.
pub fn parse_object_members(
    bytes: &[u8],
) -> Result<Option<Vec<(String, MemberValue)>>, SyntaxError> {
    let mut p = Parser { b: bytes, pos: 0 };
    p.skip_ws();
    if p.b.get(p.pos) != Some(&b'{') {
        return Ok(None);
    }
    p.pos += 1;
    let mut members = Vec::new();
    if p.peek_nonspace()? == b'}' {
        return Ok(Some(members));
    }
    loop {
        let key = p.object_key()?;
        let value = match p.peek_nonspace()? {
            b'"' => match p.hex_id_string() {
                Some(id) => MemberValue::Id(id),
                None => MemberValue::Value(Value::String(p.string()?)),
            },
            _ => MemberValue::Value(p.value(1)?),
        };
        members.push((key, value));
        match p.peek_nonspace()? {
            b',' => {
                p.pos += 1;
                p.peek_nonspace()?;
            }
            // Trailing bytes after the object are ignored, as by `parse`.
            b'}' => return Ok(Some(members)),
            _ => return Err(p.err("after object key:value pair")),
        }
    }
}

/// A container being filled while parsing (explicit stack instead of recursion).
enum Frame {
    Array(Vec<Value>),
    /// The members so far (in input order) and the key whose value is being parsed. Collected
    /// in a `Vec` and turned into a map once, at `}`: a bulk build from (usually sorted)
    /// members is linear, where n inserts into a `BTreeMap` cost n log n key comparisons (a
    /// visible share of parsing a 100k-entry state).
    Object(Vec<(String, Value)>, String),
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, context: &'static str) -> SyntaxError {
        match self.b.get(self.pos) {
            Some(&byte) => SyntaxError::InvalidCharacter {
                byte,
                context,
                offset: self.pos,
            },
            None => SyntaxError::UnexpectedEof,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next non-whitespace byte, or `unexpected EOF` (we are inside a value).
    fn peek_nonspace(&mut self) -> Result<u8, SyntaxError> {
        self.skip_ws();
        self.b
            .get(self.pos)
            .copied()
            .ok_or(SyntaxError::UnexpectedEof)
    }

    fn parse_document(mut self) -> Result<Value, SyntaxError> {
        self.skip_ws();
        if self.pos >= self.b.len() {
            return Err(SyntaxError::Eof);
        }
        self.value(0)
    }

    /// One value starting at the current position, nested `depth` containers deep.
    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let mut stack: Vec<Frame> = Vec::new();
        'value: loop {
            // Expecting the start of a value.
            let c = self.peek_nonspace()?;
            let mut val = match c {
                b'{' | b'[' => {
                    if depth + stack.len() >= MAX_DEPTH {
                        return Err(self.err("exceeded max depth"));
                    }
                    self.pos += 1;
                    let d = self.peek_nonspace()?;
                    if c == b'[' {
                        if d == b']' {
                            self.pos += 1;
                            Value::Array(Vec::new())
                        } else {
                            stack.push(Frame::Array(Vec::new()));
                            continue 'value;
                        }
                    } else if d == b'}' {
                        self.pos += 1;
                        Value::Object(Map::new())
                    } else {
                        let key = self.object_key()?;
                        stack.push(Frame::Object(Vec::new(), key));
                        continue 'value;
                    }
                }
                b'"' => Value::String(self.string()?),
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true", Value::Bool(true))?,
                b'f' => self.literal(b"false", Value::Bool(false))?,
                b'n' => self.literal(b"null", Value::Null)?,
                _ => return Err(self.err("looking for beginning of value")),
            };
            // A value is complete: hand it to the enclosing containers, closing them as we go.
            loop {
                match stack.pop() {
                    // Go's decoder stops right after the first value; trailing bytes are ignored.
                    None => return Ok(val),
                    Some(Frame::Array(mut items)) => {
                        items.push(val);
                        match self.peek_nonspace()? {
                            b',' => {
                                self.pos += 1;
                                stack.push(Frame::Array(items));
                                continue 'value;
                            }
                            b']' => {
                                self.pos += 1;
                                val = Value::Array(items);
                            }
                            _ => return Err(self.err("after array element")),
                        }
                    }
                    Some(Frame::Object(mut map, key)) => {
                        map.push((key, val));
                        match self.peek_nonspace()? {
                            b',' => {
                                self.pos += 1;
                                self.peek_nonspace()?;
                                let key = self.object_key()?;
                                stack.push(Frame::Object(map, key));
                                continue 'value;
                            }
                            b'}' => {
                                self.pos += 1;
                                // `BTreeMap::from_iter` sorts stably and keeps the last of
                                // equal keys: duplicate keys, last one wins (as Go).
                                val = Value::Object(map.into_iter().collect());
                            }
                            _ => return Err(self.err("after object key:value pair")),
                        }
                    }
                }
            }
        }
    }

    /// At a (whitespace-skipped) position where a key is expected: the key and its `:`.
    fn object_key(&mut self) -> Result<String, SyntaxError> {
        if self.b.get(self.pos) != Some(&b'"') {
            return Err(self.err("looking for beginning of object key string"));
        }
        let key = self.string()?;
        if self.peek_nonspace()? != b':' {
            return Err(self.err("after object key"));
        }
        self.pos += 1;
        Ok(key)
    }

    fn literal(&mut self, word: &'static [u8], v: Value) -> Result<Value, SyntaxError> {
        self.pos += 1; // first letter already matched
        for &want in &word[1..] {
            if self.b.get(self.pos) != Some(&want) {
                return Err(self.err(literal_context(word, want)));
            }
            self.pos += 1;
        }
        Ok(v)
    }

    /// A number following Go's scanner states; the value ends at the first byte that cannot
    /// continue it (which the caller then judges).
    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        if self.b[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("in numeric literal")),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.err("after decimal point in numeric literal"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.b.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.b.get(self.pos) {
                self.pos += 1;
            }
            if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.err("in exponent of numeric literal"));
            }
            self.digits();
        }
        // The slice is ASCII by construction.
        let text = std::str::from_utf8(&self.b[start..self.pos]).unwrap_or("0");
        let canon = canonical_number(text).map_err(SyntaxError::Number)?;
        Ok(canonical_value(canon))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    /// A string starting at the opening quote: validated like Go's scanner, decoded like Go's
    /// `unquote` (escapes, surrogates, invalid UTF-8 → U+FFFD per failing byte).
    fn string(&mut self) -> Result<String, SyntaxError> {
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos; // start of the current run of raw bytes
        loop {
            let Some(&c) = self.b.get(self.pos) else {
                return Err(SyntaxError::UnexpectedEof);
            };
            match c {
                b'"' => {
                    push_lossy_go(&mut out, &self.b[run..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    push_lossy_go(&mut out, &self.b[run..self.pos]);
                    self.pos += 1;
                    let Some(&e) = self.b.get(self.pos) else {
                        return Err(SyntaxError::UnexpectedEof);
                    };
                    let simple = match e {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        b'u' => None,
                        _ => return Err(self.err("in string escape code")),
                    };
                    self.pos += 1;
                    match simple {
                        Some(ch) => out.push(ch),
                        None => {
                            let r = self.hex4()?;
                            out.push(self.finish_u_escape(r));
                        }
                    }
                    run = self.pos;
                }
                0x00..=0x1F => return Err(self.err("in string literal")),
                _ => self.pos += 1,
            }
        }
    }

    /// At an opening quote: a string of exactly 64 lowercase hex digits (consumed, decoded), or
    /// `None` with nothing consumed.
    fn hex_id_string(&mut self) -> Option<crate::oid::ObjectId> {
        let s = self.b.get(self.pos..self.pos + 66)?;
        if s[65] != b'"' {
            return None;
        }
        let id = crate::oid::ObjectId::from_hex_bytes(&s[1..65])?;
        self.pos += 66;
        Some(id)
    }

    /// The four hex digits of a `\u` escape (position just after the `u`).
    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut r = 0u32;
        for _ in 0..4 {
            let Some(&h) = self.b.get(self.pos) else {
                return Err(SyntaxError::UnexpectedEof);
            };
            let Some(d) = (h as char).to_digit(16) else {
                return Err(self.err("in \\u hexadecimal character escape"));
            };
            r = r * 16 + d;
            self.pos += 1;
        }
        Ok(r)
    }

    /// Go's `unquote` for a decoded `\uXXXX`: a surrogate combines with a directly following
    /// `\uXXXX` when they form a valid pair, otherwise it becomes U+FFFD (and the following
    /// escape, if any, is decoded on its own).
    fn finish_u_escape(&mut self, r: u32) -> char {
        if !(0xD800..0xE000).contains(&r) {
            return char::from_u32(r).unwrap_or('\u{FFFD}');
        }
        if (0xD800..0xDC00).contains(&r) {
            if let Some(r2) = self.peek_u_escape() {
                if (0xDC00..0xE000).contains(&r2) {
                    self.pos += 6;
                    let c = 0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00);
                    return char::from_u32(c).unwrap_or('\u{FFFD}');
                }
            }
        }
        '\u{FFFD}'
    }

    /// A complete, valid `\uXXXX` at the current position, without consuming it.
    fn peek_u_escape(&self) -> Option<u32> {
        let s = self.b.get(self.pos..self.pos + 6)?;
        if s[0] != b'\\' || s[1] != b'u' {
            return None;
        }
        s[2..]
            .iter()
            .try_fold(0u32, |acc, &h| Some(acc * 16 + (h as char).to_digit(16)?))
    }
}

/// Go's message for a literal whose next byte is not `want`.
fn literal_context(word: &[u8], want: u8) -> &'static str {
    match (word, want) {
        (b"true", b'r') => "in literal true (expecting 'r')",
        (b"true", b'u') => "in literal true (expecting 'u')",
        (b"true", _) => "in literal true (expecting 'e')",
        (b"false", b'a') => "in literal false (expecting 'a')",
        (b"false", b'l') => "in literal false (expecting 'l')",
        (b"false", b's') => "in literal false (expecting 's')",
        (b"false", _) => "in literal false (expecting 'e')",
        (_, b'u') => "in literal null (expecting 'u')",
        _ => "in literal null (expecting 'l')",
    }
}

/// Appends `bytes` decoding UTF-8 like Go's `utf8.DecodeRune` loop: every byte at which
/// decoding fails becomes one U+FFFD and decoding resumes at the next byte (this differs from
/// Rust's `from_utf8_lossy`, which replaces a whole truncated sequence by a single U+FFFD).
fn push_lossy_go(out: &mut String, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let good = e.valid_up_to();
                // The prefix is valid UTF-8 by definition of valid_up_to.
                out.push_str(std::str::from_utf8(&bytes[..good]).unwrap_or_default());
                out.push('\u{FFFD}');
                bytes = &bytes[good + 1..];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// Converts valid JSON number text to pvr's canonical number text, exactly (no `f64`):
///
/// * integral values as plain digits however large: `1e3` → `1000`, `1e400` → 401 digits,
///   `-0` / `-0.0` → `0`, `100e-2` → `1`, `1.5E+10` → `15000000000`;
/// * other values as `d.dddE±n` with the shortest significand of the decimal input and no `+`:
///   `0.1` → `1.0E-1`, `2.50` → `2.5E0`, `-3.25` → `-3.25E0`, `1e-400` → `1.0E-400`.
///
/// Refuses invalid text and numbers that would expand beyond [`MAX_CANONICAL_DIGITS`] digits
/// or whose exponent is beyond ±10^30 (see [`NumberError`]).
pub fn canonical_number(text: &str) -> Result<String, NumberError> {
    let invalid = || NumberError::Invalid(excerpt(text));
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_part = &b[int_start..i];
    if int_part.is_empty() || (int_part.len() > 1 && int_part[0] == b'0') {
        return Err(invalid());
    }
    let mut frac_part: &[u8] = &[];
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_part = &b[s..i];
        if frac_part.is_empty() {
            return Err(invalid());
        }
    }
    let mut exp_negative = false;
    let mut exp_digits: &[u8] = &[];
    let has_exp = i < b.len() && (b[i] == b'e' || b[i] == b'E');
    if has_exp {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            exp_negative = b[i] == b'-';
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        exp_digits = &b[s..i];
        if exp_digits.is_empty() {
            return Err(invalid());
        }
    }
    if i != b.len() {
        return Err(invalid());
    }

    // Significant digits D (no leading/trailing zeros) and the power of ten of D's last digit.
    let all: Vec<u8> = int_part.iter().chain(frac_part).copied().collect();
    let first = all.iter().position(|&d| d != b'0');
    let Some(first) = first else {
        return Ok("0".to_owned()); // any zero, whatever its sign or exponent
    };
    let last = all.iter().rposition(|&d| d != b'0').unwrap_or(first);
    let sig = &all[first..=last];
    let trailing_zeros = (all.len() - 1 - last) as i128;

    let exp_digits = {
        let nz = exp_digits.iter().position(|&d| d != b'0');
        nz.map_or(&exp_digits[..0], |p| &exp_digits[p..])
    };
    if exp_digits.len() > MAX_EXPONENT_DIGITS {
        return Err(NumberError::ExponentOutOfRange(excerpt(text)));
    }
    let mut exp: i128 = exp_digits
        .iter()
        .fold(0i128, |acc, &d| acc * 10 + i128::from(d - b'0'));
    if exp_negative {
        exp = -exp;
    }
    // Exponent of the last significant digit.
    let e10 = exp - frac_part.len() as i128 + trailing_zeros;
    let limit = 10i128.pow(MAX_EXPONENT_DIGITS as u32);
    if e10.abs() > limit {
        return Err(NumberError::ExponentOutOfRange(excerpt(text)));
    }

    let mut out = String::with_capacity(sig.len() + 8);
    if negative {
        out.push('-');
    }
    if e10 >= 0 {
        // Refuse only *expansion* beyond the limit: an integer written out in full is kept.
        if e10 > 0 && (sig.len() as i128 + e10) > MAX_CANONICAL_DIGITS as i128 {
            return Err(NumberError::TooLarge(excerpt(text)));
        }
        let zeros = usize::try_from(e10).unwrap_or(0); // <= MAX_CANONICAL_DIGITS here
        out.extend(sig.iter().map(|&d| d as char));
        out.extend(std::iter::repeat_n('0', zeros));
    } else {
        let n = e10 + sig.len() as i128 - 1;
        out.push(sig[0] as char);
        out.push('.');
        if sig.len() == 1 {
            out.push('0');
        } else {
            out.extend(sig[1..].iter().map(|&d| d as char));
        }
        out.push('E');
        out.push_str(&n.to_string());
    }
    Ok(out)
}

/// A `Value::Number` holding the canonical text of `text` (normally already canonical, as
/// returned by [`canonical_number`]); `Value::Null` if `text` is not a JSON number we accept.
///
/// Why `from_string_unchecked`: every public way of building a `serde_json::Number` from text
/// (`FromStr`, `Deserialize`) re-scans it and rewrites the exponent (`2.5E0` → `2.5e+0`), which
/// would break the canonical-text invariant. The text is validated by `canonical_number` first.
pub fn number_value(text: &str) -> Value {
    match canonical_number(text) {
        Ok(c) => canonical_value(c),
        Err(_) => Value::Null,
    }
}

/// Wraps text already produced by [`canonical_number`].
fn canonical_value(canonical: String) -> Value {
    Value::Number(serde_json::Number::from_string_unchecked(canonical))
}

/// Rewrites every number in `v` to its canonical text, establishing the module invariant for
/// values built outside this module (e.g. with `serde_json::json!`). Numbers that cannot be
/// canonicalised (see [`NumberError`]) are left as they are.
pub fn normalize_numbers(v: &mut Value) {
    let mut todo: Vec<&mut Value> = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Number(n) => {
                if let Value::Number(m) = number_value(&n.to_string()) {
                    *n = m;
                }
            }
            Value::Array(a) => todo.extend(a.iter_mut()),
            Value::Object(m) => todo.extend(m.values_mut()),
            _ => {}
        }
    }
}

/// The text Go's `encoding/json` writes for the `float64` nearest to `number` (any JSON number
/// text): `strconv.FormatFloat(f, 'f', -1, 64)` when `1e-6 <= |f| < 1e21` (or `f == 0`), else
/// the `'e'` format with a two-digit-minimum exponent cleaned like Go (`1e-07` → `1e-7`,
/// `1e+21`). `None` when the value overflows `f64` (Go's decoder would reject it).
pub fn go_float64_text(number: &str) -> Option<String> {
    let f: f64 = number.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        // Rust's Display is the shortest round-trip digits in plain notation, like Go's 'f', -1.
        return Some(format!("{f}"));
    }
    // Rust's LowerExp: shortest digits, exponent without sign padding ("1.5e-7", "1e21").
    let s = format!("{f:e}");
    let (mant, exp) = s.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    Some(if exp < 0 {
        format!("{mant}e-{}", -exp)
    } else {
        format!("{mant}e+{exp:02}")
    })
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

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

/// True for a JSON string of exactly 64 hex digits (either case): the shape of an object id,
/// which pvr's state layer treats as a reference rather than an inline value.
pub fn is_object_id_string(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(input: &str) -> String {
        String::from_utf8(to_canonical(&parse(input.as_bytes()).unwrap())).unwrap()
    }

    fn err(input: &[u8]) -> String {
        parse(input).unwrap_err().to_string()
    }

    #[test]
    fn canonical_numbers() {
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("0e5", "0"),
            ("-0.000e-99999999999999999999999999999999999999", "0"),
            ("1", "1"),
            ("-42", "-42"),
            ("1e3", "1000"),
            ("1E+3", "1000"),
            ("100e-2", "1"),
            ("0.1e1", "1"),
            ("2.5e3", "2500"),
            ("100.000", "100"),
            ("1.5E+10", "15000000000"),
            ("0.1", "1.0E-1"),
            ("2.50", "2.5E0"),
            ("-3.25", "-3.25E0"),
            ("1e-400", "1.0E-400"),
            ("123456.789", "1.23456789E5"),
            ("0.000120", "1.2E-4"),
            ("1.25E-2", "1.25E-2"),
            ("5e-324", "5.0E-324"),
            ("12345678901234567890", "12345678901234567890"),
            ("-9223372036854775809", "-9223372036854775809"),
        ];
        for (i, want) in cases {
            assert_eq!(canonical_number(i).unwrap(), want, "{i}");
        }
        assert_eq!(canonical_number("1e400").unwrap().len(), 401);
        let f = "1.7976931348623157e308";
        assert_eq!(canonical_number(f).unwrap().len(), 309);
    }

    #[test]
    fn canonical_number_limits_and_invalid() {
        assert!(matches!(
            canonical_number("1e999999999"),
            Err(NumberError::TooLarge(_))
        ));
        assert!(matches!(
            canonical_number("1e99999999999999999999999999999999999999999"),
            Err(NumberError::ExponentOutOfRange(_))
        ));
        assert!(matches!(
            canonical_number("1e-99999999999999999999999999999999999999999"),
            Err(NumberError::ExponentOutOfRange(_))
        ));
        // The limit is on expansion: a long integer written out in full is fine ...
        let long = "7".repeat(20_000);
        assert_eq!(canonical_number(&long).unwrap(), long);
        // ... and so is a tiny number with a huge negative exponent.
        assert_eq!(canonical_number("1e-999999999").unwrap(), "1.0E-999999999");
        assert_eq!(canonical_number("1e9999").unwrap().len(), 10_000);
        assert!(canonical_number("1e10000").is_err());
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "0x10", "1 ", "NaN", "١",
        ] {
            assert!(
                matches!(canonical_number(bad), Err(NumberError::Invalid(_))),
                "{bad:?}"
            );
        }
        let long_bad = format!("{}e99999", "9".repeat(100));
        assert_eq!(
            canonical_number(&long_bad).unwrap_err().to_string(),
            format!(
                "number {}... too large: its canonical form would exceed 10000 digits",
                "9".repeat(32)
            )
        );
        let e = parse(b"[1e999999999]").unwrap_err();
        assert!(matches!(e, SyntaxError::Number(NumberError::TooLarge(_))));
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn number_value_keeps_text() {
        for t in [
            "0",
            "-1",
            "1.0E-400",
            "2.5E0",
            "-3.25E0",
            "12345678901234567890",
        ] {
            let v = number_value(t);
            assert_eq!(v.to_string(), t);
            assert_eq!(to_canonical(&v), t.as_bytes());
        }
        assert_eq!(number_value(&"1".repeat(500)).to_string(), "1".repeat(500));
        // Non-canonical input is canonicalised, garbage is Null.
        assert_eq!(number_value("2.50").to_string(), "2.5E0");
        assert_eq!(number_value("1e3"), number_value("1000"));
        assert_eq!(number_value("x"), Value::Null);
        assert_eq!(number_value(" 1"), Value::Null);
        // Semantic equality is text equality under the invariant.
        assert_eq!(parse(b"1e3").unwrap(), parse(b"1000.0").unwrap());
        assert_ne!(parse(b"1").unwrap(), parse(b"1.5").unwrap());
    }

    #[test]
    fn normalize_numbers_canonicalises() {
        let mut v = serde_json::json!({"a": [1.5, 2, {"b": 0.1}], "c": -0.0});
        normalize_numbers(&mut v);
        assert_eq!(
            String::from_utf8(to_canonical(&v)).unwrap(),
            r#"{"a":[1.5E0,2,{"b":1.0E-1}],"c":0}"#
        );
    }

    #[test]
    fn parse_first_value_only() {
        assert_eq!(canon("{} x"), "{}");
        assert_eq!(canon("{} {}"), "{}");
        assert_eq!(canon("01"), "0");
        assert_eq!(canon("0x10"), "0");
        assert_eq!(canon("1.5.3"), "1.5E0");
        assert_eq!(canon("truex"), "true");
        assert_eq!(canon("[1]]"), "[1]");
        assert_eq!(canon("\"a\"\"b\""), "\"a\"");
        assert_eq!(canon(" \t\r\n null \u{0}"), "null");
    }

    #[test]
    fn parse_errors_match_go() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "EOF"),
            (b" \n\t\r", "EOF"),
            (b"{\"a\":1", "unexpected EOF"),
            (b"[", "unexpected EOF"),
            (b"-", "unexpected EOF"),
            (b"1.", "unexpected EOF"),
            (b"1e+", "unexpected EOF"),
            (b"tru", "unexpected EOF"),
            (b"\"abc", "unexpected EOF"),
            (b"\"\\", "unexpected EOF"),
            (b"\"\\u12", "unexpected EOF"),
            (b"{\"a\"", "unexpected EOF"),
            (b"{\"a\":", "unexpected EOF"),
            (b"[1,", "unexpected EOF"),
            (b"x", "invalid character 'x' looking for beginning of value"),
            (
                b"\xEF\xBB\xBF{}",
                "invalid character 'ï' looking for beginning of value",
            ),
            (
                b"[1,2,]",
                "invalid character ']' looking for beginning of value",
            ),
            (
                b"{'a':1}",
                r"invalid character '\'' looking for beginning of object key string",
            ),
            (
                b"{\"a\":1,}",
                "invalid character '}' looking for beginning of object key string",
            ),
            (b"{\"a\" 1}", "invalid character '1' after object key"),
            (
                b"{\"a\":1 /* c */}",
                "invalid character '/' after object key:value pair",
            ),
            (b"[1 2]", "invalid character '2' after array element"),
            (b"[01]", "invalid character '1' after array element"),
            (b"\"\\x41\"", "invalid character 'x' in string escape code"),
            (b"\"a\tb\"", r"invalid character '\t' in string literal"),
            (b"\"a\x01\"", r"invalid character '\x01' in string literal"),
            (
                b"\"\\u12g4\"",
                r"invalid character 'g' in \u hexadecimal character escape",
            ),
            (b"-x", "invalid character 'x' in numeric literal"),
            (
                b"1.x",
                "invalid character 'x' after decimal point in numeric literal",
            ),
            (
                b"1ex",
                "invalid character 'x' in exponent of numeric literal",
            ),
            (
                b"1e+x",
                "invalid character 'x' in exponent of numeric literal",
            ),
            (
                b"trUe",
                "invalid character 'U' in literal true (expecting 'u')",
            ),
            (
                b"fals0",
                "invalid character '0' in literal false (expecting 'e')",
            ),
            (
                b"nil",
                "invalid character 'i' in literal null (expecting 'u')",
            ),
            (b"\"", "unexpected EOF"),
            (b"[\"a\":1]", "invalid character ':' after array element"),
            (
                b"{\"a\":1:}",
                "invalid character ':' after object key:value pair",
            ),
            (
                b"\x80",
                r"invalid character '\u0080' looking for beginning of value",
            ),
            (
                b"\xA0",
                r"invalid character '\u00a0' looking for beginning of value",
            ),
            (
                b"\xAD",
                r"invalid character '\u00ad' looking for beginning of value",
            ),
            (
                b"\xFF",
                "invalid character 'ÿ' looking for beginning of value",
            ),
            (
                b"\x7F",
                r"invalid character '\x7f' looking for beginning of value",
            ),
            (
                b"\x0B",
                r"invalid character '\v' looking for beginning of value",
            ),
            (
                b"\\",
                r"invalid character '\\' looking for beginning of value",
            ),
            (
                b"'",
                r"invalid character '\'' looking for beginning of value",
            ),
            (
                b"{\"a\":\"b\"\"",
                "invalid character '\"' after object key:value pair",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                &err(input),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        match parse(b"  [1, x]") {
            Err(SyntaxError::InvalidCharacter { byte, offset, .. }) => {
                assert_eq!((byte, offset), (b'x', 6));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strings_decode_like_go() {
        assert_eq!(canon(r#""\ud83d\ude00\uD83C\uDF89""#), "\"😀🎉\"");
        assert_eq!(canon(r#""a\ud800b""#), "\"a\u{FFFD}b\"");
        assert_eq!(canon(r#""a\udc00b""#), "\"a\u{FFFD}b\"");
        // A high surrogate followed by a non-low escape: U+FFFD, then the escape on its own.
        assert_eq!(canon(r#""\ud800\u0041""#), "\"\u{FFFD}A\"");
        assert_eq!(canon(r#""\ud800\ud800\udc00""#), "\"\u{FFFD}\u{10000}\"");
        assert_eq!(canon(r#""\udc00\ud800""#), "\"\u{FFFD}\u{FFFD}\"");
        assert_eq!(canon(r#""\ud800\n""#), "\"\u{FFFD}\\n\"");
        assert_eq!(canon(r#""\/\b\f\n\r\t\"\\""#), r#""/\b\f\n\r\t\"\\""#);
        assert_eq!(canon(r#""\u000b\u007f\u00e9""#), "\"\\u000B\u{7f}é\"");
        // Invalid UTF-8: one U+FFFD per failing byte (Go), unlike from_utf8_lossy.
        let cases: &[(&[u8], &str)] = &[
            (b"\"a\xffb\xc3(\"", "a\u{FFFD}b\u{FFFD}("),
            (b"\"\xc0\xaf\"", "\u{FFFD}\u{FFFD}"),
            (b"\"\xe2\x82A\"", "\u{FFFD}\u{FFFD}A"),
            (b"\"\xed\xa0\x80\"", "\u{FFFD}\u{FFFD}\u{FFFD}"),
            (b"\"\xf4\x90\x80\x80\"", "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"),
            (b"\"\xf0\x9f\x98\x80\\n\xf0\x9f\"", "😀\n\u{FFFD}\u{FFFD}"),
            (b"\"\xef\xbf\xbd\"", "\u{FFFD}"),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap(), Value::String((*want).to_owned()));
        }
        let v = parse(b"{\"k\xfe\":1}").unwrap();
        assert_eq!(to_canonical(&v), "{\"k\u{FFFD}\":1}".as_bytes());
    }

    #[test]
    fn objects_sorted_and_last_duplicate_wins() {
        assert_eq!(canon(r#"{"a": 1, "b": 2, "a": 3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(
            canon(r#"{"\ud83d\ude00": 1, "\uffff": 2, "\ue000": 3, "é": 4, "E": 5}"#),
            "{\"E\":5,\"é\":4,\"\u{e000}\":3,\"\u{ffff}\":2,\"😀\":1}"
        );
        assert_eq!(canon("{\n}\n"), "{}");
        assert_eq!(canon("[ ]"), "[]");
        assert_eq!(
            canon(r#"{"z": {"b": [ {"y": 1, "x": 2} ], "a": {}}, "a": [[], {}]}"#),
            r#"{"a":[[],{}],"z":{"a":{},"b":[{"x":2,"y":1}]}}"#
        );
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let v = parse(ok.as_bytes()).unwrap();
        assert_eq!(to_canonical(&v), ok.as_bytes());
        let pretty = to_pvr_json_pretty(&v);
        assert!(pretty.starts_with("[\n\t[\n\t\t[") && pretty.ends_with("\t]\n]\n"));
        // Dropping (and cloning, comparing) a Value recurses in serde_json; check that the
        // deepest value we accept survives that on a default 2 MiB test thread.
        assert_eq!(v.clone(), v);
        drop(v);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            err(deep.as_bytes()),
            "invalid character '[' exceeded max depth"
        );
        let deep = format!("{}{{}}", "[".repeat(MAX_DEPTH));
        assert_eq!(
            err(deep.as_bytes()),
            "invalid character '{' exceeded max depth"
        );
        let deep = "[".repeat(1_000_000);
        assert_eq!(
            err(deep.as_bytes()),
            "invalid character '[' exceeded max depth"
        );
        let deep = format!("{}1", "{\"a\":".repeat(MAX_DEPTH));
        assert_eq!(err(deep.as_bytes()), "unexpected EOF");
    }

    #[test]
    fn canonical_string_escapes() {
        let s: String = (0u8..0x20).map(char::from).collect::<String>()
            + "\"\\/<&>\u{7f}\u{80}\u{2028}\u{2029}é😀";
        let out = String::from_utf8(to_canonical(&Value::String(s))).unwrap();
        assert_eq!(
            out,
            "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000B\\f\\r\\u000E\\u000F\
             \\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001A\\u001B\\u001C\
             \\u001D\\u001E\\u001F\\\"\\\\/<&>\u{7f}\u{80}\u{2028}\u{2029}é😀\""
        );
    }

    #[test]
    fn go_string_escapes() {
        let s: String =
            "\u{1}\u{8}\u{b}\u{c}\u{1f}\t\n\r\"\\/<&>\u{7f}\u{80}\u{2028}\u{2029}é".into();
        let out = to_go_indent(&Value::String(s), "\t", false);
        assert_eq!(
            out,
            "\"\\u0001\\b\\u000b\\f\\u001f\\t\\n\\r\\\"\\\\/\\u003c\\u0026\\u003e\u{7f}\u{80}\\u2028\\u2029é\""
        );
    }

    #[test]
    fn go_float64_formatting() {
        let cases = [
            ("0", "0"),
            ("1", "1"),
            ("-42", "-42"),
            ("2.5E0", "2.5"),
            ("1.0E-1", "0.1"),
            ("1000", "1000"),
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551616", "18446744073709552000"),
            ("12345678901234567890", "12345678901234567000"),
            ("123456789012345678901234567890", "1.2345678901234568e+29"),
            ("100000000000000000000", "100000000000000000000"),
            ("1000000000000000000000", "1e+21"),
            ("1.0E-6", "0.000001"),
            ("1.5E-7", "1.5e-7"),
            ("1.0E-10", "1e-10"),
            ("1.0E-400", "0"),
            ("-1.0E-400", "-0"),
            ("5.0E-324", "5e-324"),
            ("3.141592653589793238462643383279E0", "3.141592653589793"),
            ("-1.23456789E5", "-123456.789"),
        ];
        for (i, want) in cases {
            assert_eq!(go_float64_text(i).as_deref(), Some(want), "{i}");
        }
        let f = canonical_number("1.7976931348623157e308").unwrap();
        assert_eq!(
            go_float64_text(&f).as_deref(),
            Some("1.7976931348623157e+308")
        );
        assert_eq!(go_float64_text(&canonical_number("1e400").unwrap()), None);
        // render_diff falls back to the canonical text when f64 overflows.
        let v = parse(b"[1e400]").unwrap();
        assert!(render_diff(&v).contains(&canonical_number("1e400").unwrap()));
    }

    #[test]
    fn renderings_of_basic_lifecycle_config() {
        let input = "{\n  \"name\": \"demo\",\n  \"zeta\": [1, 2.50, 1e3, -0.0],\n  \"alpha\": {\"b\": true, \"html\": \"<&>\", \"uni\": \"h\\u00e9llo \\u2603\", \"esc\": \"tab\\tnl\\n\"},\n  \"float\": 0.1\n}\n";
        let v = parse(input.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(to_canonical(&v)).unwrap(),
            "{\"alpha\":{\"b\":true,\"esc\":\"tab\\tnl\\n\",\"html\":\"<&>\",\"uni\":\"héllo ☃\"},\"float\":1.0E-1,\"name\":\"demo\",\"zeta\":[1,2.5E0,1000,0]}"
        );
        assert_eq!(
            render_diff(&v),
            "{\n\t\"alpha\": {\n\t\t\"b\": true,\n\t\t\"esc\": \"tab\\tnl\\n\",\n\t\t\"html\": \"\\u003c\\u0026\\u003e\",\n\t\t\"uni\": \"héllo ☃\"\n\t},\n\t\"float\": 0.1,\n\t\"name\": \"demo\",\n\t\"zeta\": [\n\t\t1,\n\t\t2.5,\n\t\t1000,\n\t\t0\n\t]\n}\n"
        );
        assert_eq!(
            to_pvr_json_pretty(&v),
            "{\n\t\"alpha\": {\n\t\t\"b\": true,\n\t\t\"esc\": \"tab\\tnl\\n\",\n\t\t\"html\": \"<&>\",\n\t\t\"uni\": \"héllo ☃\"\n\t},\n\t\"float\": 1.0E-1,\n\t\"name\": \"demo\",\n\t\"zeta\": [\n\t\t1,\n\t\t2.5E0,\n\t\t1000,\n\t\t0\n\t]\n}\n"
        );
        assert_eq!(
            String::from_utf8(render_checkout(&v)).unwrap(),
            "{\n    \"alpha\": {\n        \"b\": true,\n        \"esc\": \"tab\\tnl\\n\",\n        \"html\": \"\\u003c\\u0026\\u003e\",\n        \"uni\": \"héllo ☃\"\n    },\n    \"float\": 1.0E-1,\n    \"name\": \"demo\",\n    \"zeta\": [\n        1,\n        2.5E0,\n        1000,\n        0\n    ]\n}"
        );
        assert_eq!(render_checkout_canonical(&v), to_canonical(&v));
    }

    #[test]
    fn empty_and_scalar_renderings() {
        let empty = Value::Object(Map::new());
        assert_eq!(render_diff(&empty), "{}\n");
        assert_eq!(to_pvr_json_pretty(&empty), "{}\n");
        assert_eq!(render_checkout(&empty), b"{}");
        let v = parse(br#"{"a": [], "m": {}, "n": null, "s": "just a string"}"#).unwrap();
        assert_eq!(
            String::from_utf8(render_checkout(&v)).unwrap(),
            "{\n    \"a\": [],\n    \"m\": {},\n    \"n\": null,\n    \"s\": \"just a string\"\n}"
        );
        let s = parse(b"\"just a string\"").unwrap();
        assert_eq!(render_checkout(&s), b"\"just a string\"");
        assert_eq!(render_diff(&Value::Null), "null\n");
        assert_eq!(
            to_go_indent(&parse(b"[[1],[]]").unwrap(), "  ", false),
            "[\n  [\n    1\n  ],\n  []\n]"
        );
    }

    #[test]
    fn object_id_strings() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(is_object_id_string(&Value::String(hex.clone())));
        assert!(is_object_id_string(&Value::String(hex.to_uppercase())));
        assert!(!is_object_id_string(&Value::String(hex[..63].to_owned())));
        assert!(!is_object_id_string(&Value::String(format!("{hex}0"))));
        assert!(!is_object_id_string(&Value::String(format!(
            "{}g",
            &hex[..63]
        ))));
        assert!(!is_object_id_string(&serde_json::json!({ "sha": hex })));
        assert!(!is_object_id_string(&Value::Null));
    }

    /// Tiny deterministic PRNG (xorshift) so the fuzz test needs no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn check_fixed_point(v: &Value) {
        let c = to_canonical(v);
        let back = parse(&c).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&c)));
        assert_eq!(&back, v);
        assert_eq!(to_canonical(&back), c);
        // The pretty renderings with stored numbers re-parse to the same value too.
        assert_eq!(&parse(to_pvr_json_pretty(v).as_bytes()).unwrap(), v);
        assert_eq!(&parse(&render_checkout(v)).unwrap(), v);
    }

    #[test]
    fn fuzz_random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Bias towards JSON-ish bytes so that many inputs get deep into the parser.
        let alphabet: &[u8] =
            b"{}[]\":,.-+0123456789eEtrufalsn \t\r\n\\u/bdDcC\xc3\xa9\xff\xed\xa0\x80x";
        let mut accepted = 0;
        for round in 0..20_000 {
            let len = (rng.next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rng.next();
                    if round % 4 == 0 {
                        r as u8
                    } else {
                        alphabet[(r as usize) % alphabet.len()]
                    }
                })
                .collect();
            if let Ok(v) = parse(&bytes) {
                accepted += 1;
                check_fixed_point(&v);
                let _ = render_diff(&v);
            }
        }
        assert!(accepted > 100, "only {accepted} accepted");
    }

    #[test]
    fn generated_values_are_fixed_points() {
        let mut rng = Rng(42);
        let atoms = [
            "0",
            "-1",
            "1e400",
            "2.50",
            "-3.25",
            "1e-400",
            "true",
            "false",
            "null",
            "\"\"",
            "\"a\\u0000b\"",
            "\"\\ud83d\\ude00\"",
            "\"<&>\\u2028\"",
            "\"\\u001f\\u007f\"",
            "12345678901234567890",
            "0.000120",
        ];
        for _ in 0..2_000 {
            let mut text = String::new();
            gen(&mut rng, &atoms, 0, &mut text);
            let v = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
            check_fixed_point(&v);
        }
    }

    fn gen(rng: &mut Rng, atoms: &[&str], depth: u32, out: &mut String) {
        match rng.next() % if depth > 4 { 1 } else { 3 } {
            0 => out.push_str(atoms[(rng.next() as usize) % atoms.len()]),
            1 => {
                out.push('[');
                for i in 0..rng.next() % 4 {
                    if i > 0 {
                        out.push_str(" , ");
                    }
                    gen(rng, atoms, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..rng.next() % 4 {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!("\"k{}\":", rng.next() % 5));
                    gen(rng, atoms, depth + 1, out);
                }
                out.push('}');
            }
        }
    }
}
