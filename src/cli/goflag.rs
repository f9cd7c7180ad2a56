//! The parts of Go's standard library whose behaviour (and error texts) the
//! `doozer` command shows to its user: the `flag` package's parsing,
//! `strconv.ParseInt` / `ParseBool` and `time.ParseDuration`, as they were in
//! the Go release the original was built with (Go 1.1, 2013).

use std::fmt;

/// How one flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A boolean: `-x` alone means true; a value only with `-x=value`.
    Bool,
    /// Any other flag: `-x value` or `-x=value`.
    Value,
}

/// Why parsing stopped. `Display` is the line Go prints before the usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagError {
    /// `-help` or `--help` when no such flag is defined: Go prints only the
    /// usage (and exits 2).
    Help,
    Undefined(String),
    BadSyntax(String),
    NeedsArgument(String),
    BadValue {
        name: String,
        value: String,
        err: String,
    },
    BadBool {
        name: String,
        value: String,
        err: String,
    },
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagError::Help => f.write_str("flag: help requested"),
            FlagError::Undefined(name) => write!(f, "flag provided but not defined: -{name}"),
            FlagError::BadSyntax(arg) => write!(f, "bad flag syntax: {arg}"),
            FlagError::NeedsArgument(name) => write!(f, "flag needs an argument: -{name}"),
            FlagError::BadValue { name, value, err } => {
                write!(
                    f,
                    "invalid value {} for flag -{name}: {err}",
                    go_quote(value)
                )
            }
            // Go 1.1 really has two spaces here.
            FlagError::BadBool { name, value, err } => {
                write!(
                    f,
                    "invalid boolean value {} for  -{name}: {err}",
                    go_quote(value)
                )
            }
        }
    }
}

/// Go's `flag.FlagSet.Parse` over `args`: flags are taken until the first
/// argument that is not one (`-` alone and anything not starting with `-`),
/// or until `--`, which is dropped. Returns the remaining arguments.
///
/// `kind_of` says whether a name is a defined flag and how it takes a value;
/// `set` stores a value (its error text becomes the `invalid value` message).
pub fn parse(
    args: &[String],
    kind_of: impl Fn(&str) -> Option<Kind>,
    mut set: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<&[String], FlagError> {
    let mut i = 0;
    while i < args.len() {
        let s = args[i].as_str();
        if s.len() < 2 || !s.starts_with('-') {
            break;
        }
        let mut minuses = 1;
        if s.as_bytes()[1] == b'-' {
            minuses = 2;
            if s.len() == 2 {
                i += 1;
                break;
            }
        }
        let name = &s[minuses..];
        if name.is_empty() || name.starts_with('-') || name.starts_with('=') {
            return Err(FlagError::BadSyntax(s.to_string()));
        }
        i += 1;
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name, None),
        };
        let Some(kind) = kind_of(name) else {
            if name == "help" || name == "h" {
                return Err(FlagError::Help);
            }
            return Err(FlagError::Undefined(name.to_string()));
        };
        match kind {
            Kind::Bool => {
                let value = value.unwrap_or("true");
                set(name, value).map_err(|err| FlagError::BadBool {
                    name: name.to_string(),
                    value: value.to_string(),
                    err,
                })?;
            }
            Kind::Value => {
                let value = match value {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].as_str()
                    }
                    None => return Err(FlagError::NeedsArgument(name.to_string())),
                };
                set(name, value).map_err(|err| FlagError::BadValue {
                    name: name.to_string(),
                    value: value.to_string(),
                    err,
                })?;
            }
        }
    }
    Ok(&args[i..])
}

/// Go's `strconv.Quote`, close enough for flag values.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {}: invalid syntax",
            go_quote(s)
        )),
    }
}

/// Go's `strconv.ParseInt(s, base, 64)` for base 10, or base 0 (`0x` hex,
/// leading `0` octal, else decimal), with Go's error texts.
pub fn parse_int(s: &str, base: u32) -> Result<i64, String> {
    let syntax = || format!("strconv.ParseInt: parsing {}: invalid syntax", go_quote(s));
    let range = || {
        format!(
            "strconv.ParseInt: parsing {}: value out of range",
            go_quote(s)
        )
    };
    let (neg, digits) = match s.as_bytes().first() {
        None => return Err(syntax()),
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        Some(_) => (false, s),
    };
    if digits.is_empty() {
        return Err(syntax());
    }
    let (radix, digits) = if base == 0 {
        if digits.len() > 1 && (digits.starts_with("0x") || digits.starts_with("0X")) {
            if digits.len() < 3 {
                return Err(syntax());
            }
            (16, &digits[2..])
        } else if digits.starts_with('0') {
            (8, digits)
        } else {
            (10, digits)
        }
    } else {
        (base, digits)
    };
    let mut n: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).ok_or_else(syntax)?;
        n = n
            .checked_mul(u64::from(radix))
            .and_then(|n| n.checked_add(u64::from(d)))
            .ok_or_else(range)?;
    }
    let cutoff = 1u64 << 63;
    match neg {
        false if n >= cutoff => Err(range()),
        true if n > cutoff => Err(range()),
        false => Ok(n as i64),
        true => Ok((n as i64).wrapping_neg()),
    }
}

/// Go 1.1's `time.ParseDuration`, in nanoseconds: a sign, then one or more
/// `<decimal number><unit>` (units `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`,
/// `h`), or `0`. Error texts as Go's (`time: invalid duration 1x`, …).
pub fn parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig}");
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut value: f64 = if int_len > 0 {
            s[..int_len].parse::<u64>().map_err(|_| invalid())? as f64
        } else {
            0.0
        };
        s = &s[int_len..];
        let mut frac_len = 0;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            frac_len = s.bytes().take_while(|c| c.is_ascii_digit()).count();
            if frac_len > 0 {
                let frac = s[..frac_len].parse::<u64>().map_err(|_| invalid())? as f64;
                value += frac / 10f64.powi(frac_len as i32);
            }
            s = &s[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(at, _)| at)
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig}"));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit {unit} in duration {orig}")),
        };
        total += value * scale;
    }
    if neg {
        total = -total;
    }
    // Go compares with float64(-1<<63) and float64(1<<63-1), both 2^63.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if !(-LIMIT..=LIMIT).contains(&total) {
        return Err("time: overflow parsing duration".into());
    }
    Ok(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn kinds(name: &str) -> Option<Kind> {
        match name {
            "a" | "r" | "t" => Some(Kind::Value),
            "h" | "v" => Some(Kind::Bool),
            _ => None,
        }
    }

    type Parsed = (Result<Vec<String>, FlagError>, Vec<(String, String)>);

    fn run(args: &[&str]) -> Parsed {
        let args = strings(args);
        let mut seen = Vec::new();
        let rest = parse(&args, kinds, |n, v| {
            if n == "v" {
                parse_bool(v)?;
            }
            if n == "r" {
                parse_int(v, 0)?;
            }
            seen.push((n.to_string(), v.to_string()));
            Ok(())
        })
        .map(|r| r.to_vec());
        (rest, seen)
    }

    #[test]
    fn go_flag_parsing() {
        let (rest, seen) = run(&["-a", "doozer:?ca=x", "--r=5", "-v", "get", "-h", "/x"]);
        assert_eq!(rest.unwrap(), ["get", "-h", "/x"]);
        assert_eq!(
            seen,
            [
                ("a".into(), "doozer:?ca=x".into()),
                ("r".into(), "5".into()),
                ("v".into(), "true".into())
            ]
        );
        // "--" ends the flags and is dropped; "-" alone is an argument.
        assert_eq!(run(&["-v", "--", "-h"]).0.unwrap(), ["-h"]);
        assert_eq!(run(&["-", "-v"]).0.unwrap(), ["-", "-v"]);
        // A negative number after the first argument stays an argument.
        assert_eq!(run(&["del", "/x", "-1"]).0.unwrap(), ["del", "/x", "-1"]);
    }

    #[test]
    fn go_flag_errors() {
        let err = |args: &[&str]| run(args).0.unwrap_err().to_string();
        assert_eq!(err(&["-x"]), "flag provided but not defined: -x");
        assert_eq!(err(&["--xyz=1"]), "flag provided but not defined: -xyz");
        assert_eq!(err(&["---a"]), "bad flag syntax: ---a");
        assert_eq!(err(&["-=a"]), "bad flag syntax: -=a");
        assert_eq!(err(&["-a"]), "flag needs an argument: -a");
        assert_eq!(
            err(&["-r", "abc"]),
            r#"invalid value "abc" for flag -r: strconv.ParseInt: parsing "abc": invalid syntax"#
        );
        assert_eq!(
            err(&["-v=maybe"]),
            r#"invalid boolean value "maybe" for  -v: strconv.ParseBool: parsing "maybe": invalid syntax"#
        );
        assert_eq!(run(&["-help"]).0.unwrap_err(), FlagError::Help);
        assert_eq!(run(&["--help"]).0.unwrap_err(), FlagError::Help);
    }

    #[test]
    fn ints_like_go() {
        assert_eq!(parse_int("42", 10), Ok(42));
        assert_eq!(parse_int("-1", 10), Ok(-1));
        assert_eq!(parse_int("+7", 10), Ok(7));
        assert_eq!(parse_int("0x1f", 0), Ok(31));
        assert_eq!(parse_int("-0X10", 0), Ok(-16));
        assert_eq!(parse_int("017", 0), Ok(15));
        assert_eq!(parse_int("017", 10), Ok(17));
        assert_eq!(parse_int("-9223372036854775808", 10), Ok(i64::MIN));
        assert_eq!(parse_int("9223372036854775807", 10), Ok(i64::MAX));
        assert_eq!(
            parse_int("9223372036854775808", 10).unwrap_err(),
            r#"strconv.ParseInt: parsing "9223372036854775808": value out of range"#
        );
        assert_eq!(
            parse_int("", 10).unwrap_err(),
            r#"strconv.ParseInt: parsing "": invalid syntax"#
        );
        assert_eq!(
            parse_int("1.5", 10).unwrap_err(),
            r#"strconv.ParseInt: parsing "1.5": invalid syntax"#
        );
        assert_eq!(
            parse_int("-", 10).unwrap_err(),
            r#"strconv.ParseInt: parsing "-": invalid syntax"#
        );
        assert_eq!(
            parse_int("0x", 0).unwrap_err(),
            r#"strconv.ParseInt: parsing "0x": invalid syntax"#
        );
        assert_eq!(
            parse_int("09", 0).unwrap_err(),
            r#"strconv.ParseInt: parsing "09": invalid syntax"#
        );
    }

    #[test]
    fn bools_like_go() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert_eq!(
            parse_bool("yes").unwrap_err(),
            r#"strconv.ParseBool: parsing "yes": invalid syntax"#
        );
    }

    #[test]
    fn durations_like_go() {
        const S: i64 = 1_000_000_000;
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("-0"), Ok(0));
        assert_eq!(parse_duration("1m30s"), Ok(90 * S));
        assert_eq!(parse_duration("500ms"), Ok(S / 2));
        assert_eq!(parse_duration("1.5s"), Ok(3 * S / 2));
        assert_eq!(parse_duration(".5s"), Ok(S / 2));
        assert_eq!(parse_duration("1.s"), Ok(S));
        assert_eq!(parse_duration("2h"), Ok(7200 * S));
        assert_eq!(parse_duration("10us"), Ok(10_000));
        assert_eq!(parse_duration("10µs"), Ok(10_000));
        assert_eq!(parse_duration("10μs"), Ok(10_000));
        assert_eq!(parse_duration("7ns"), Ok(7));
        assert_eq!(parse_duration("-1.5h"), Ok(-5400 * S));
        assert_eq!(parse_duration("+3s"), Ok(3 * S));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(3723 * S + 4_000_000));
        assert_eq!(parse_duration("").unwrap_err(), "time: invalid duration ");
        assert_eq!(
            parse_duration("1").unwrap_err(),
            "time: missing unit in duration 1"
        );
        assert_eq!(
            parse_duration("10").unwrap_err(),
            "time: missing unit in duration 10"
        );
        assert_eq!(
            parse_duration("1x").unwrap_err(),
            "time: unknown unit x in duration 1x"
        );
        assert_eq!(parse_duration("s").unwrap_err(), "time: invalid duration s");
        assert_eq!(
            parse_duration(".s").unwrap_err(),
            "time: invalid duration .s"
        );
        assert_eq!(
            parse_duration("1s ").unwrap_err(),
            "time: unknown unit s  in duration 1s "
        );
        assert_eq!(parse_duration("-").unwrap_err(), "time: invalid duration -");
        assert_eq!(
            parse_duration("3000000h").unwrap_err(),
            "time: overflow parsing duration"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote("a\"b\\c\n\x01"), r#""a\"b\\c\n\x01""#);
    }
}
