//! Doozer cluster URIs: `doozer:?ca=host:port&ca=…&cn=name&sk=secret`
//! (reference §7), plus ours: `tlsca=FILE` dials over TLS, trusting the CA
//! certificates in FILE.
//!
//! The text after the exact prefix `doozer:?` is a standard URL query string
//! (`&` or `;` between pairs, `%xx` escapes, `+` for a space; the order of the
//! parameters does not matter). Differences from the Go client, as the
//! contract asks: an address without a port gets the documented default port
//! 8046. `un=` is accepted and ignored, like any other unknown parameter.

use std::fmt;

/// The client port a `ca` address gets when it names none.
pub const DEFAULT_PORT: u16 = 8046;

/// The prefix every doozer URI starts with, byte for byte.
pub const PREFIX: &str = "doozer:?";

/// The URI the CLI uses when neither `-a` nor `DOOZER_URI` is given.
pub const DEFAULT_URI: &str = "doozer:?ca=127.0.0.1:8046";

/// A parsed doozer URI.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Uri {
    /// The `ca` addresses, in the order given, each with a port.
    pub addrs: Vec<String>,
    /// `cn`: the cluster to look up in a boot (DzNS) cluster, if any.
    pub cluster_name: Option<String>,
    /// `sk`: the secret to present with ACCESS after connecting, if any.
    pub secret: Option<String>,
    /// `tlsca`: dial over TLS, trusting the CA certificates in this PEM
    /// file (and checking each server's certificate against the address
    /// dialled).
    pub tls_ca: Option<String>,
}

/// Why a URI was refused. The texts are the Go client's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UriError {
    /// The text does not start with `doozer:?`.
    Invalid,
    /// A bad `%` escape; holds the offending text (at most 3 bytes).
    BadEscape(String),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::Invalid => f.write_str("invalid uri"),
            UriError::BadEscape(s) => write!(f, "invalid URL escape {s:?}"),
        }
    }
}

impl std::error::Error for UriError {}

impl Uri {
    /// Parses a URI. Only the prefix and the query's escapes can make it fail;
    /// whether there is anything to dial is decided when dialling.
    pub fn parse(text: &str) -> Result<Uri, UriError> {
        let query = text.strip_prefix(PREFIX).ok_or(UriError::Invalid)?;
        let mut uri = Uri::default();
        for (key, value) in parse_query(query)? {
            match key.as_str() {
                "ca" => uri.addrs.push(with_default_port(&value)),
                "cn" if uri.cluster_name.is_none() => uri.cluster_name = Some(value),
                "sk" if uri.secret.is_none() => uri.secret = Some(value),
                "tlsca" if uri.tls_ca.is_none() && !value.is_empty() => uri.tls_ca = Some(value),
                _ => {}
            }
        }
        Ok(uri)
    }
}

impl std::str::FromStr for Uri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Uri, UriError> {
        Uri::parse(s)
    }
}

/// `host` → `host:8046`, `[v6]` or a bare IPv6 literal → `[v6]:8046`, and
/// `host:` → `host:8046`; an address with a port is left alone.
pub fn with_default_port(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        // "[v6]" or "[v6]:port".
        return match rest.find(']') {
            Some(end) if rest[end + 1..].is_empty() || rest[end + 1..] == *":" => {
                format!("[{}]:{DEFAULT_PORT}", &rest[..end])
            }
            _ => addr.to_string(),
        };
    }
    match addr.matches(':').count() {
        0 => format!("{addr}:{DEFAULT_PORT}"),
        1 if addr.ends_with(':') => format!("{addr}{DEFAULT_PORT}"),
        1 => addr.to_string(),
        // Several colons and no brackets: a bare IPv6 address.
        _ => format!("[{addr}]:{DEFAULT_PORT}"),
    }
}

/// Go's `url.ParseQuery`: pairs split on `&` or `;`, empty pairs skipped, a
/// pair without `=` has an empty value. The first bad escape is the error.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, UriError> {
    let mut out = Vec::new();
    let mut first_err = None;
    for pair in query.split(['&', ';']) {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (query_unescape(key), query_unescape(value)) {
            (Ok(k), Ok(v)) => out.push((k, v)),
            (Err(e), _) | (_, Err(e)) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Go's `url.QueryUnescape`: `%xx` → the byte, `+` → space. Bytes that do not
/// form UTF-8 are replaced (Go strings may hold them; ours may not).
pub fn query_unescape(s: &str) -> Result<String, UriError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(bytes.len());
                        let bad = String::from_utf8_lossy(&bytes[i..end]).into_owned();
                        return Err(UriError::BadEscape(bad));
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_ca_parameter() {
        let uri = Uri::parse("doozer:?ca=127.0.0.1&tlsca=%2Fetc%2Fdoozer%2Fca.pem").unwrap();
        assert_eq!(uri.tls_ca.as_deref(), Some("/etc/doozer/ca.pem"));
        assert_eq!(
            Uri::parse("doozer:?ca=127.0.0.1&tlsca=").unwrap().tls_ca,
            None
        );
    }

    #[test]
    fn parses_all_parameters() {
        let uri = Uri::parse("doozer:?ca=10.0.0.1:8046&ca=10.0.0.2:9000&cn=prod&sk=s3cret&un=ABC")
            .unwrap();
        assert_eq!(uri.addrs, ["10.0.0.1:8046", "10.0.0.2:9000"]);
        assert_eq!(uri.cluster_name.as_deref(), Some("prod"));
        assert_eq!(uri.secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn default_uri_parses() {
        let uri: Uri = DEFAULT_URI.parse().unwrap();
        assert_eq!(uri.addrs, ["127.0.0.1:8046"]);
        assert_eq!(uri.cluster_name, None);
        assert_eq!(uri.secret, None);
    }

    #[test]
    fn prefix_must_be_exact() {
        for bad in [
            "",
            "doozer:",
            "doozer?:ca=1.2.3.4:8046",
            "Doozer:?ca=x",
            " doozer:?ca=x",
            "http://x",
        ] {
            assert_eq!(Uri::parse(bad), Err(UriError::Invalid), "{bad:?}");
        }
        assert_eq!(UriError::Invalid.to_string(), "invalid uri");
        // Nothing after the prefix is fine for parsing.
        assert_eq!(Uri::parse("doozer:?").unwrap(), Uri::default());
    }

    #[test]
    fn query_decoding() {
        let uri = Uri::parse("doozer:?sk=a%20b+c%2Bd%26e&cn=x%3Dy;ca=h%3A1").unwrap();
        assert_eq!(uri.secret.as_deref(), Some("a b c+d&e"));
        assert_eq!(uri.cluster_name.as_deref(), Some("x=y"));
        assert_eq!(uri.addrs, ["h:1"]);
        // The first occurrence of cn/sk wins, as in Go (name[0]).
        let uri = Uri::parse("doozer:?cn=a&cn=b&sk=1&sk=2").unwrap();
        assert_eq!(uri.cluster_name.as_deref(), Some("a"));
        assert_eq!(uri.secret.as_deref(), Some("1"));
        // Empty pairs and pairs without '=' are tolerated.
        let uri = Uri::parse("doozer:?&&sk&ca=h:2&").unwrap();
        assert_eq!(uri.secret.as_deref(), Some(""));
        assert_eq!(uri.addrs, ["h:2"]);
    }

    #[test]
    fn bad_escapes_are_errors() {
        let err = Uri::parse("doozer:?ca=h:1&sk=%zz").unwrap_err();
        assert_eq!(err, UriError::BadEscape("%zz".into()));
        assert_eq!(err.to_string(), r#"invalid URL escape "%zz""#);
        assert_eq!(
            Uri::parse("doozer:?sk=ab%4").unwrap_err().to_string(),
            r#"invalid URL escape "%4""#
        );
        assert_eq!(
            Uri::parse("doozer:?sk=%").unwrap_err().to_string(),
            r#"invalid URL escape "%""#
        );
    }

    #[test]
    fn missing_port_defaults_to_8046() {
        let uri = Uri::parse(
            "doozer:?ca=example.com&ca=10.1.1.1:1234&ca=::1&ca=[fe80::1]&ca=[::1]:99&ca=h:",
        )
        .unwrap();
        assert_eq!(
            uri.addrs,
            [
                "example.com:8046",
                "10.1.1.1:1234",
                "[::1]:8046",
                "[fe80::1]:8046",
                "[::1]:99",
                "h:8046"
            ]
        );
    }
}
