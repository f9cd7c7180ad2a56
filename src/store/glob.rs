//! Glob patterns for WAIT and WALK (reference §3.7).
//!
//! A pattern is translated, conceptually, into an anchored regular expression:
//! `?` is one character other than `/`, `*` a run of non-`/` characters, and in a
//! run of stars every pair becomes `.*` (crossing `/`, possibly empty) while an odd
//! star left over becomes `[^/]*`. Everything else matches itself.
//!
//! **Cost.** A client writes the pattern, so matching must stay cheap whatever
//! it is: no backtracking. The pattern is compiled into a small NFA, one state
//! per element, simulated as a bit set (shift-and): each input byte costs a
//! few operations per 64-bit word of states, so one match is
//! `O(path bytes × pattern bytes / 64)` in the worst case, never exponential,
//! and patterns of under 64 elements (all practical ones) take one word. A run
//! of stars is one element: `**`, `****` and `***` all mean `.*` (the odd star
//! adds nothing to `.*`), so a state's empty moves never chain and the closure
//! is one shift. Patterns are at most [`MAX_GLOB_BYTES`] long, checked here
//! where they are parsed. The same state sets drive the pruning of subtrees
//! during a walk ([`Glob::start`], [`Glob::advance`]).

use std::fmt;
use std::sync::Arc;

use crate::types::{PathError, MAX_GLOB_BYTES};

/// The compiled pattern: bit `i` of a state set means "the next element to
/// match is element `i`"; bit `len` (one past the last element) is acceptance.
/// Masks have one bit per element, `words` 64-bit words each.
struct Program {
    /// Number of elements.
    len: usize,
    /// 64-bit words per state set: `(len + 1).div_ceil(64)`.
    words: usize,
    /// Elements `?` (one byte other than `/`).
    one: Box<[u64]>,
    /// Elements `*` (a run of bytes other than `/`).
    star: Box<[u64]>,
    /// Elements `**` (any run of bytes).
    star_star: Box<[u64]>,
    /// For each ASCII byte, its index in `lits` (`u8::MAX`: not in the pattern).
    lit_index: [u8; 128],
    /// For each distinct literal byte of the pattern, the elements that are it:
    /// `words` words each.
    lits: Box<[u64]>,
}

/// A validated, compiled glob pattern. Cheap to clone.
#[derive(Clone)]
pub struct Glob {
    text: Arc<str>,
    program: Arc<Program>,
    /// Byte length of the literal prefix (text before the first `*` or `?`).
    prefix_len: usize,
}

/// Words of a state set kept inline (patterns under 128 elements).
const INLINE_WORDS: usize = 2;

/// The set of NFA states reached after some input (see [`Program`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobState(Bits);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Bits {
    Inline([u64; INLINE_WORDS]),
    Heap(Box<[u64]>),
}

impl GlobState {
    fn zero(words: usize) -> GlobState {
        if words <= INLINE_WORDS {
            GlobState(Bits::Inline([0; INLINE_WORDS]))
        } else {
            GlobState(Bits::Heap(vec![0; words].into()))
        }
    }

    /// All words (inline ones past the pattern's are zero).
    fn words(&self) -> &[u64] {
        match &self.0 {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match &mut self.0 {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        }
    }

    /// No state is reachable: no continuation of the input can match.
    pub fn is_dead(&self) -> bool {
        self.words().iter().all(|w| *w == 0)
    }
}

fn is_glob_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*' | b'?')
}

/// One element of a pattern, while compiling.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Lit(u8),
    One,
    Star,
    StarStar,
}

fn set_bit(mask: &mut [u64], i: usize) {
    mask[i / 64] |= 1 << (i % 64);
}

impl Program {
    fn compile(pattern: &[u8]) -> Program {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' => {
                    let run = pattern[i..].iter().take_while(|b| **b == b'*').count();
                    tokens.push(if run == 1 {
                        Token::Star
                    } else {
                        Token::StarStar
                    });
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
        let len = tokens.len();
        let words = (len + 1).div_ceil(64);
        let mut one = vec![0; words];
        let mut star = vec![0; words];
        let mut star_star = vec![0; words];
        let mut lit_index = [u8::MAX; 128];
        let mut lits: Vec<u64> = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            match *token {
                Token::One => set_bit(&mut one, i),
                Token::Star => set_bit(&mut star, i),
                Token::StarStar => set_bit(&mut star_star, i),
                Token::Lit(b) => {
                    let b = usize::from(b);
                    assert!(b < 128, "glob bytes are ASCII");
                    if lit_index[b] == u8::MAX {
                        // At most 65 distinct bytes pass the syntax check.
                        lit_index[b] = u8::try_from(lits.len() / words.max(1))
                            .expect("fewer than 255 distinct literal bytes");
                        lits.extend(std::iter::repeat_n(0, words));
                    }
                    let at = usize::from(lit_index[b]) * words;
                    set_bit(&mut lits[at..at + words], i);
                }
            }
        }
        Program {
            len,
            words,
            one: one.into(),
            star: star.into(),
            star_star: star_star.into(),
            lit_index,
            lits: lits.into(),
        }
    }

    fn lit_mask(&self, c: u8) -> Option<&[u64]> {
        let index = *self.lit_index.get(usize::from(c))?;
        if index == u8::MAX {
            return None;
        }
        let at = usize::from(index) * self.words;
        Some(&self.lits[at..at + self.words])
    }

    /// Adds the states reachable by letting a star match the empty string:
    /// the element after each star (never a star itself, so one shift).
    fn close(&self, s: &mut [u64]) {
        let mut carry = 0;
        let stars = self.star.iter().zip(self.star_star.iter());
        for (word, (star, star_star)) in s[..self.words].iter_mut().zip(stars) {
            let from_star = *word & (star | star_star);
            *word |= (from_star << 1) | carry;
            carry = from_star >> 63;
        }
    }

    /// `next` = the states after reading `c` from `cur`. Returns whether any
    /// state is left.
    fn step(&self, cur: &[u64], c: u8, next: &mut [u64]) -> bool {
        let lit = self.lit_mask(c);
        let not_slash = c != b'/';
        let mut carry = 0;
        let mut close_carry = 0;
        let mut any = 0;
        for w in 0..self.words {
            let d = cur[w];
            let mut advance = lit.map_or(0, |l| l[w]);
            let mut stay = self.star_star[w];
            if not_slash {
                advance |= self.one[w];
                stay |= self.star[w];
            }
            let moved = d & advance;
            let mut n = (moved << 1) | carry | (d & stay);
            carry = moved >> 63;
            let from_star = n & (self.star[w] | self.star_star[w]);
            n |= (from_star << 1) | close_carry;
            close_carry = from_star >> 63;
            next[w] = n;
            any |= n;
        }
        any != 0
    }

    fn accepts(&self, s: &[u64]) -> bool {
        s[self.len / 64] & (1 << (self.len % 64)) != 0
    }
}

impl Glob {
    /// Checks the length limit ([`MAX_GLOB_BYTES`]) and the syntax
    /// `^/$|^(/([a-zA-Z0-9.\-]|[*?])+)+$`, and compiles.
    pub fn parse(pattern: &str) -> Result<Glob, PathError> {
        if pattern.len() > MAX_GLOB_BYTES {
            return Err(PathError::GlobTooLong { len: pattern.len() });
        }
        let valid = pattern == "/"
            || pattern.strip_prefix('/').is_some_and(|rest| {
                rest.split('/')
                    .all(|name| !name.is_empty() && name.bytes().all(is_glob_byte))
            });
        if !valid {
            return Err(PathError::BadGlob(pattern.to_string()));
        }
        let prefix_len = pattern
            .bytes()
            .position(|b| matches!(b, b'*' | b'?'))
            .unwrap_or(pattern.len());
        Ok(Glob {
            text: Arc::from(pattern),
            program: Arc::new(Program::compile(pattern.as_bytes())),
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

    /// The memory this glob holds, in bytes: its text and its compiled form
    /// (up to about 9 bytes per pattern byte for a long pattern using many
    /// distinct characters, a few hundred bytes for a short one). What a
    /// byte budget for waiting requests should count.
    pub fn heap_bytes(&self) -> usize {
        let p = &*self.program;
        let words = p.one.len() + p.star.len() + p.star_star.len() + p.lits.len();
        self.text.len() + std::mem::size_of::<Program>() + 8 * words
    }

    /// What matching a path of `path_len` bytes costs at most, in word steps:
    /// the unit of the work budgets that keep long scans from holding the core.
    pub fn match_cost(&self, path_len: usize) -> u64 {
        let steps = u64::try_from(path_len)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        steps.saturating_mul(self.program.words as u64)
    }

    /// Whether `path` matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        if !path.starts_with(self.literal_prefix()) {
            return false;
        }
        let p = &*self.program;
        let mut cur = GlobState::zero(p.words);
        let mut next = GlobState::zero(p.words);
        set_bit(cur.words_mut(), 0);
        p.close(cur.words_mut());
        for &c in path.as_bytes() {
            if !p.step(cur.words(), c, next.words_mut()) {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        p.accepts(cur.words())
    }

    /// The state before any input.
    pub fn start(&self) -> GlobState {
        let mut s = GlobState::zero(self.program.words);
        set_bit(s.words_mut(), 0);
        self.program.close(s.words_mut());
        s
    }

    /// The state after feeding `input` on top of `state`.
    pub fn advance(&self, state: &GlobState, input: &str) -> GlobState {
        let p = &*self.program;
        let mut cur = state.clone();
        let mut next = GlobState::zero(p.words);
        for &c in input.as_bytes() {
            if !p.step(cur.words(), c, next.words_mut()) {
                return next;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur
    }

    /// Whether the input that led to `state` matches the pattern.
    pub fn accepts(&self, state: &GlobState) -> bool {
        self.program.accepts(state.words())
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

    #[test]
    fn over_long_patterns_are_refused_without_echo() {
        let at_limit = format!("/{}", "a".repeat(MAX_GLOB_BYTES - 1));
        assert!(Glob::parse(&at_limit).unwrap().matches(&at_limit));
        let long = format!("/{}", "*".repeat(1 << 20));
        let err = Glob::parse(&long).unwrap_err();
        assert_eq!(err, PathError::GlobTooLong { len: long.len() });
        let text = err.to_string();
        assert!(
            text.starts_with("invalid glob pattern: ") && text.len() < 100,
            "{text}"
        );
    }

    #[test]
    fn compiled_size_is_a_small_multiple_of_the_text() {
        let short = Glob::parse("/ctl/node/*/addr").unwrap();
        assert!(short.heap_bytes() < 400, "{}", short.heap_bytes());
        // Every allowed character, over and over: the worst case.
        let alphabet: String = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain(['.', '-', '?', '*'])
            .collect();
        let mut text = String::from("/");
        while text.len() + alphabet.len() < MAX_GLOB_BYTES {
            text.push_str(&alphabet);
            text.push('/');
        }
        let worst = Glob::parse(text.trim_end_matches('/')).unwrap();
        let ratio = worst.heap_bytes() as f64 / worst.as_str().len() as f64;
        println!(
            "compiled glob: {} bytes for {} bytes of text",
            worst.heap_bytes(),
            worst.as_str().len()
        );
        assert!(ratio < 10.0, "{ratio}");
    }

    /// Attack: thousands of stars against a long path. Every state stays
    /// alive, and matching stays linear in path × pattern words.
    #[test]
    fn adversarial_star_patterns_are_fast() {
        let path = format!("/{}", "a/".repeat(2047))
            .trim_end_matches('/')
            .to_string();
        assert!(path.len() <= crate::types::MAX_PATH_BYTES);
        let patterns = [
            format!("/{}b", "**a".repeat(1364)),
            format!("/{}", "*?".repeat(2047)),
            format!("/{}", "*/".repeat(2000))
                .trim_end_matches('/')
                .to_string(),
            format!("/{}b", "a**".repeat(1364)),
        ];
        let started = std::time::Instant::now();
        for pattern in &patterns {
            let g = Glob::parse(pattern).unwrap();
            for _ in 0..20 {
                std::hint::black_box(g.matches(&path));
            }
        }
        let took = started.elapsed();
        let steps: u64 = patterns
            .iter()
            .map(|p| 20 * Glob::parse(p).unwrap().match_cost(path.len()))
            .sum();
        println!(
            "80 worst-case matches: {took:?}, {:.2} ns per word step",
            took.as_nanos() as f64 / steps as f64
        );
        // 80 worst-case matches: well under a millisecond each.
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
        assert!(!Glob::parse(&patterns[0]).unwrap().matches(&path));
        assert!(Glob::parse(&patterns[2])
            .unwrap()
            .matches(&format!("/{}", "a/".repeat(1999) + "a")));
    }

    /// The reference semantics, straight from the regular expression (each
    /// `**` pair is `.*`, an odd star `[^/]*`), by dynamic programming over
    /// (pattern position, path position), without the star-run folding.
    fn reference(pattern: &str, path: &str) -> bool {
        #[derive(Clone, Copy)]
        enum T {
            Lit(u8),
            One,
            Star,
            Any,
        }
        let b = pattern.as_bytes();
        let mut t = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'*' {
                let run = b[i..].iter().take_while(|c| **c == b'*').count();
                t.extend(std::iter::repeat_n(T::Any, run / 2));
                if run % 2 == 1 {
                    t.push(T::Star);
                }
                i += run;
            } else {
                t.push(if b[i] == b'?' { T::One } else { T::Lit(b[i]) });
                i += 1;
            }
        }
        let p = path.as_bytes();
        // m[j]: the pattern's first `k` tokens match the path's first `j` bytes.
        let mut m = vec![false; p.len() + 1];
        m[0] = true;
        for tok in &t {
            let mut n = vec![false; p.len() + 1];
            for j in 0..=p.len() {
                n[j] = match tok {
                    T::Lit(c) => j > 0 && m[j - 1] && p[j - 1] == *c,
                    T::One => j > 0 && m[j - 1] && p[j - 1] != b'/',
                    T::Star => m[j] || (j > 0 && n[j - 1] && p[j - 1] != b'/'),
                    T::Any => m[j] || (j > 0 && n[j - 1]),
                };
            }
            m = n;
        }
        m[p.len()]
    }

    #[test]
    fn agrees_with_the_reference_semantics() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let pattern_bytes = b"ab/*?";
        let path_bytes = b"ab/";
        for round in 0..20_000 {
            // Long enough, now and then, to need several words of states.
            let max = if round % 10 == 0 { 200 } else { 12 };
            let plen = rng.random_range(0..max);
            let mut pattern = String::from("/");
            for _ in 0..plen {
                pattern.push(pattern_bytes[rng.random_range(0..pattern_bytes.len())] as char);
            }
            let Ok(g) = Glob::parse(&pattern) else {
                continue;
            };
            let mut path = String::from("/");
            for _ in 0..rng.random_range(0..max) {
                path.push(path_bytes[rng.random_range(0..path_bytes.len())] as char);
            }
            assert_eq!(
                g.matches(&path),
                reference(&pattern, &path),
                "{pattern} against {path}"
            );
            // Feeding the path in pieces gives the same answer.
            let cut = rng.random_range(0..=path.len());
            let s = g.advance(&g.advance(&g.start(), &path[..cut]), &path[cut..]);
            assert_eq!(g.accepts(&s), reference(&pattern, &path));
        }
    }
}
