//! Glob patterns for WAIT and WALK (reference §3.7).
//!
//! A pattern is translated, conceptually, into an anchored regular expression:
//! `?` is one character other than `/`, `*` a run of non-`/` characters, and in a
//! run of stars every pair becomes `.*` (crossing `/`, possibly empty) while an odd
//! star left over becomes `[^/]*`. Everything else matches itself.
//!
//! Matching is done by simulating the pattern as a small NFA (one state per token),
//! so it is `O(pattern × path)` whatever the pattern, never exponential. The same
//! state sets drive the pruning of subtrees during a walk ([`Glob::start`],
//! [`Glob::advance`]).

use std::fmt;
use std::sync::Arc;

use crate::types::PathError;

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// A literal byte.
    Lit(u8),
    /// `?`: exactly one byte other than `/`.
    One,
    /// `*`: any run of bytes other than `/`.
    Star,
    /// `**`: any run of bytes, `/` included.
    StarStar,
}

/// A validated, compiled glob pattern. Cheap to clone.
#[derive(Clone)]
pub struct Glob {
    text: Arc<str>,
    tokens: Arc<[Token]>,
    /// Byte length of the literal prefix (text before the first `*` or `?`).
    prefix_len: usize,
}

/// The set of NFA states reached after some input: state `i` means "the next
/// token to match is `tokens[i]`"; state `tokens.len()` is acceptance.
/// Patterns of fewer than 128 tokens (all practical ones) need no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobState(Bits);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Bits {
    Small(u128),
    Big(Box<[u64]>),
}

impl GlobState {
    fn new(states: usize) -> GlobState {
        if states <= 128 {
            GlobState(Bits::Small(0))
        } else {
            GlobState(Bits::Big(vec![0; states.div_ceil(64)].into()))
        }
    }

    fn get(&self, i: usize) -> bool {
        match &self.0 {
            Bits::Small(b) => b & (1 << i) != 0,
            Bits::Big(b) => b[i / 64] & (1 << (i % 64)) != 0,
        }
    }

    fn put(&mut self, i: usize) {
        match &mut self.0 {
            Bits::Small(b) => *b |= 1 << i,
            Bits::Big(b) => b[i / 64] |= 1 << (i % 64),
        }
    }

    /// The lowest state `>= from` in the set.
    fn next_set(&self, from: usize) -> Option<usize> {
        match &self.0 {
            Bits::Small(b) => {
                let w = if from >= 128 { 0 } else { b & (!0u128 << from) };
                (w != 0).then(|| w.trailing_zeros() as usize)
            }
            Bits::Big(b) => {
                let mut k = from / 64;
                let mut w = b.get(k)? & (!0u64 << (from % 64));
                loop {
                    if w != 0 {
                        return Some(64 * k + w.trailing_zeros() as usize);
                    }
                    k += 1;
                    w = *b.get(k)?;
                }
            }
        }
    }

    /// No state is reachable: no continuation of the input can match.
    pub fn is_dead(&self) -> bool {
        match &self.0 {
            Bits::Small(b) => *b == 0,
            Bits::Big(b) => b.iter().all(|w| *w == 0),
        }
    }
}

fn is_glob_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*' | b'?')
}

impl Glob {
    /// Checks the syntax `^/$|^(/([a-zA-Z0-9.\-]|[*?])+)+$` and compiles.
    pub fn parse(pattern: &str) -> Result<Glob, PathError> {
        let valid = pattern == "/"
            || pattern.strip_prefix('/').is_some_and(|rest| {
                rest.split('/')
                    .all(|name| !name.is_empty() && name.bytes().all(is_glob_byte))
            });
        if !valid {
            return Err(PathError::BadGlob(pattern.to_string()));
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'*' => {
                    let run = bytes[i..].iter().take_while(|b| **b == b'*').count();
                    tokens.extend(std::iter::repeat_n(Token::StarStar, run / 2));
                    if run % 2 == 1 {
                        tokens.push(Token::Star);
                    }
                    i += run;
                }
                b'?' => {
                    tokens.push(Token::One);
                    i += 1;
                }
                b => {
                    tokens.push(Token::Lit(b));
                    i += 1;
                }
            }
        }
        let prefix_len = bytes
            .iter()
            .position(|b| matches!(b, b'*' | b'?'))
            .unwrap_or(bytes.len());
        Ok(Glob {
            text: Arc::from(pattern),
            tokens: tokens.into(),
            prefix_len,
        })
    }

    /// The glob `/**`, which matches every event path (nops included).
    pub fn any() -> Glob {
        Glob::parse("/**").expect("/** is a valid glob")
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text before the first `*` or `?`: every matching path starts with it.
    pub fn literal_prefix(&self) -> &str {
        &self.text[..self.prefix_len]
    }

    /// Whether `path` matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.accepts(&self.advance(&self.start(), path))
    }

    /// The state before any input.
    pub fn start(&self) -> GlobState {
        let mut s = GlobState::new(self.tokens.len() + 1);
        s.put(0);
        self.close(&mut s);
        s
    }

    /// The state after feeding `input` on top of `state`.
    pub fn advance(&self, state: &GlobState, input: &str) -> GlobState {
        let mut cur = state.clone();
        for &c in input.as_bytes() {
            if cur.is_dead() {
                break;
            }
            cur = self.step(&cur, c);
        }
        cur
    }

    /// Whether the input that led to `state` matches the pattern.
    pub fn accepts(&self, state: &GlobState) -> bool {
        state.get(self.tokens.len())
    }

    /// Adds the states reachable by letting stars match the empty string.
    /// Such moves only go forward: follow each run of star tokens once.
    fn close(&self, s: &mut GlobState) {
        let n = self.tokens.len();
        let mut at = s.next_set(0);
        while let Some(k) = at {
            let mut j = k;
            while j < n && matches!(self.tokens[j], Token::Star | Token::StarStar) {
                j += 1;
                s.put(j);
            }
            at = s.next_set(j + 1);
        }
    }

    fn step(&self, s: &GlobState, c: u8) -> GlobState {
        let n = self.tokens.len();
        let mut next = GlobState::new(n + 1);
        let mut at = s.next_set(0);
        while let Some(i) = at {
            if i == n {
                break; // acceptance has no way out
            }
            match self.tokens[i] {
                Token::Lit(b) if b == c => next.put(i + 1),
                Token::One if c != b'/' => next.put(i + 1),
                Token::Star if c != b'/' => next.put(i),
                Token::StarStar => next.put(i),
                _ => {}
            }
            at = s.next_set(i + 1);
        }
        self.close(&mut next);
        next
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", &*self.text)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Glob) -> bool {
        self.text == other.text
    }
}

impl Eq for Glob {}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn syntax_check() {
        for ok in [
            "/",
            "/a",
            "/*",
            "/**",
            "/a/b?",
            "/x**y",
            "/***",
            "/a.b-c/*/?",
        ] {
            assert!(Glob::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "*", "/a/", "//", "/a//b", "/a b", "/a_b", "/é", "/a:b", "/a[b]",
        ] {
            let err = Glob::parse(bad).unwrap_err();
            assert_eq!(err, PathError::BadGlob(bad.to_string()));
            assert_eq!(err.to_string(), format!("invalid glob pattern: {bad}"));
        }
    }

    #[test]
    fn reference_examples() {
        for yes in ["/a", "/ab", "/a/", "/a/b", "/ab/c"] {
            assert!(m("/a**", yes), "/a** should match {yes}");
        }
        for no in ["/", "/ba"] {
            assert!(!m("/a**", no), "/a** should not match {no}");
        }
        assert!(m("/a/**", "/a/b") && m("/a/**", "/a/b/c") && m("/a/**", "/a/"));
        assert!(!m("/a/**", "/a"));
        assert!(m("/**", "/") && m("/**", "/x/y"));
        assert!(m("/a?", "/ab"));
        assert!(!m("/a?", "/a") && !m("/a?", "/a/") && !m("/a?", "/abc"));
        assert!(m("/x**y", "/xy") && m("/x**y", "/x/a/y") && m("/x**y", "/xay"));
        assert!(!m("/x**y", "/x/a/yz"));
        assert!(m("/", "/") && !m("/", "/a"));
    }

    #[test]
    fn single_star_stays_in_component() {
        assert!(m("/*", "/a") && m("/*", "/") && !m("/*", "/a/b"));
        assert!(m("/a/*/c", "/a/b/c") && !m("/a/*/c", "/a/b/d/c"));
        assert!(m("/a*", "/a") && m("/a*", "/abc") && !m("/a*", "/a/"));
        assert!(m("/*/?", "/a/b") && !m("/*/?", "/a/bc"));
    }

    #[test]
    fn odd_runs_of_stars() {
        // `***` = `.*[^/]*`: same language as `.*`.
        assert!(m("/***", "/") && m("/***", "/a/b/c"));
        assert!(m("/a***", "/a") && m("/a***", "/a/b"));
        // `*****` = `.*.*[^/]*`.
        assert!(m("/*****x", "/a/b/x") && !m("/*****x", "/a/b/xy"));
    }

    #[test]
    fn literal_prefix() {
        assert_eq!(Glob::parse("/a/b").unwrap().literal_prefix(), "/a/b");
        assert_eq!(Glob::parse("/a/b*").unwrap().literal_prefix(), "/a/b");
        assert_eq!(Glob::parse("/a?/b*").unwrap().literal_prefix(), "/a");
        assert_eq!(Glob::parse("/**").unwrap().literal_prefix(), "/");
        assert_eq!(Glob::parse("/**").unwrap().as_str(), "/**");
    }

    #[test]
    fn no_exponential_blowup() {
        let g = Glob::parse("/**/**/**/**/**/**/**/**/**/**/**/**x").unwrap();
        let path = format!("/{}", "a/".repeat(2000));
        assert!(!g.matches(&path));
        let g = Glob::parse(&format!("/{}", "*?".repeat(200))).unwrap();
        assert!(!g.matches(&format!("/{}", "a".repeat(199))));
        assert!(g.matches(&format!("/{}", "a".repeat(200))));
    }

    #[test]
    fn incremental_state_prunes() {
        let g = Glob::parse("/a/b*").unwrap();
        let s = g.advance(&g.start(), "/a/");
        assert!(!s.is_dead());
        assert!(g.advance(&g.start(), "/c/").is_dead());
        assert!(g.accepts(&g.advance(&s, "bcd")));
    }

    #[test]
    fn many_states_beyond_one_word() {
        let pat = format!("/{}", "a".repeat(150));
        let g = Glob::parse(&format!("{pat}*")).unwrap();
        assert!(g.matches(&pat) && g.matches(&format!("{pat}zz")));
        assert!(!g.matches(&pat[..100]));
    }
}
