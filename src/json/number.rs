//! Canonical numbers: pvr's `d.dddE±n` text, computed on the decimal digits, never through `f64`.

use super::*;

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
pub(super) fn canonical_value(canonical: String) -> Value {
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
