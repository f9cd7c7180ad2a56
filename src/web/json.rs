//! A small JSON writer for the web view's API (no serde: the shapes are few
//! and fixed), and the encodings that carry store values safely.
//!
//! Strings are escaped per RFC 8259, and `<`, `>`, `&` and the two Unicode
//! line separators are escaped too, so a JSON document is inert even if
//! something were to place it inside HTML.

use std::fmt::Write;

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string literal.
#[cfg(test)]
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_str(&mut out, s);
    out
}

/// A JSON object under construction: `Obj::new().num("a", 1).finish()`.
pub struct Obj {
    out: String,
    empty: bool,
}

impl Default for Obj {
    fn default() -> Self {
        Obj::new()
    }
}

impl Obj {
    pub fn new() -> Obj {
        Obj {
            out: String::from("{"),
            empty: true,
        }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        push_str(&mut self.out, key);
        self.out.push(':');
        &mut self.out
    }

    pub fn str(mut self, key: &str, value: &str) -> Obj {
        let out = self.key(key);
        push_str(out, value);
        self
    }

    pub fn opt_str(self, key: &str, value: Option<&str>) -> Obj {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn num(mut self, key: &str, value: impl Into<i128>) -> Obj {
        let value: i128 = value.into();
        let _ = write!(self.key(key), "{value}");
        self
    }

    pub fn opt_num(self, key: &str, value: Option<impl Into<i128>>) -> Obj {
        match value {
            Some(v) => self.num(key, v),
            None => self.raw(key, "null"),
        }
    }

    /// A float, rounded to three decimals; non-finite values become `null`.
    pub fn float(self, key: &str, value: f64) -> Obj {
        if value.is_finite() {
            let text = format!("{:.3}", value);
            self.raw(key, &text)
        } else {
            self.raw(key, "null")
        }
    }

    pub fn bool(self, key: &str, value: bool) -> Obj {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// `value` must already be valid JSON.
    pub fn raw(mut self, key: &str, value: &str) -> Obj {
        self.key(key).push_str(value);
        self
    }

    /// A store value as `len` plus either `value` (the text, when the bytes
    /// are UTF-8) or `value_b64` (base64, when they are not), cut to
    /// `max` bytes (`truncated` says whether it was).
    pub fn body(self, body: &[u8], max: usize) -> Obj {
        let cut = body.len() > max;
        let shown = &body[..body.len().min(max)];
        let o = self.num("len", body.len() as u64);
        let o = match std::str::from_utf8(shown) {
            Ok(text) => o.str("value", text),
            // A cut may split a character; keep the whole characters.
            Err(e) if cut && e.error_len().is_none() => {
                let text = std::str::from_utf8(&shown[..e.valid_up_to()]).unwrap_or("");
                o.str("value", text)
            }
            Err(_) => o.str("value_b64", &base64(shown)),
        };
        o.bool("truncated", cut)
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON array of already-encoded items.
pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

/// Standard base64 with padding (RFC 4648 §4), as the browser's `atob` reads.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_inert_in_html() {
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("\n\t\u{1}"), r#""\n\t\u0001""#);
        assert_eq!(
            string("</script><b>&"),
            r#""\u003c/script\u003e\u003cb\u003e\u0026""#
        );
        assert_eq!(string("\u{2028}é"), "\"\\u2028é\"");
    }

    #[test]
    fn objects_and_arrays() {
        let o = Obj::new()
            .str("s", "x")
            .num("n", -3i64)
            .opt_num("none", None::<i64>)
            .bool("b", true)
            .float("f", 1.5)
            .raw("a", &array(vec!["1".to_string(), "2".to_string()]))
            .finish();
        assert_eq!(
            o,
            r#"{"s":"x","n":-3,"none":null,"b":true,"f":1.500,"a":[1,2]}"#
        );
        assert_eq!(array(Vec::new()), "[]");
    }

    #[test]
    fn bodies_are_text_or_base64_and_cut() {
        assert_eq!(
            Obj::new().body(b"hi", 10).finish(),
            r#"{"len":2,"value":"hi","truncated":false}"#
        );
        assert_eq!(
            Obj::new().body(&[0xff, 0, 1], 10).finish(),
            r#"{"len":3,"value_b64":"/wAB","truncated":false}"#
        );
        // A cut inside a two-byte character keeps the whole ones.
        assert_eq!(
            Obj::new().body("aé".as_bytes(), 2).finish(),
            r#"{"len":3,"value":"a","truncated":true}"#
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
