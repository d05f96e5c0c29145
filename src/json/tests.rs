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
fn nesting_depth_and_count_match_what_the_parser_counts() {
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    let v = parse(ok.as_bytes()).unwrap();
    assert_eq!(nesting_depth(&v, MAX_DEPTH), MAX_DEPTH);
    assert_eq!(nesting_depth(&v, 10), 11, "stops past the limit");
    assert_eq!(count_values(&v), MAX_DEPTH);
    let v = parse(br#"{"a":[1,{"b":[]},"x"],"c":null}"#).unwrap();
    assert_eq!(nesting_depth(&v, MAX_DEPTH), 4);
    assert_eq!(count_values(&v), 7);
    assert_eq!(nesting_depth(&parse(b"7").unwrap(), 0), 0);
    assert_eq!(nesting_depth(&parse(b"{}").unwrap(), 0), 1);
}

#[test]
fn canonical_string_escapes() {
    let s: String =
        (0u8..0x20).map(char::from).collect::<String>() + "\"\\/<&>\u{7f}\u{80}\u{2028}\u{2029}é😀";
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
    let s: String = "\u{1}\u{8}\u{b}\u{c}\u{1f}\t\n\r\"\\/<&>\u{7f}\u{80}\u{2028}\u{2029}é".into();
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
