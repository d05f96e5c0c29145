//! The parser: Go `encoding/json` compatible (see the module docs of `json`).

use super::*;

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
