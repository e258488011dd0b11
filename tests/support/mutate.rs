//! Seeded input mutation for the hostile-input tests of every crate (included with
//! `#[path]`, so no crate exports it): valid files are damaged the way real corruption and
//! hand-made attacks damage them, from a fixed seed, so every run tries the same inputs and
//! a failure names the case that reproduces it.
#![allow(dead_code, reason = "each crate's tests use the part that fits its formats")]

/// Integers that break size arithmetic: zero, one, sign edges and the largest values of
/// each width, little- and big-endian.
const INTERESTING: [u64; 12] =
    [0, 1, 2, 0x7f, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 32, 1 << 40, i64::MAX as u64, u64::MAX];

/// Text that breaks parsers of numbers, strings and nesting.
const INTERESTING_TEXT: [&str; 16] = [
    "1e309",
    "-1",
    "18446744073709551616",
    "4294967296",
    "1000000000",
    "NaN",
    "null",
    "\"\"",
    "[]",
    "{}",
    "\\u0000",
    "\"\\ud800\"",
    "0.0",
    "-0",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "\u{feff}",
];

/// A deterministic stream of mutated inputs.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator { state: seed ^ 0x9e37_79b9_7f4a_7c15 }
    }

    /// SplitMix64: fast, and good enough to pick mutations.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `seed` with one to four mutations: bit flips, interesting integers written over
    /// 1/2/4/8 bytes, truncation, deleted, duplicated or inserted runs, random tails; one
    /// case in sixteen is random bytes of a random length instead.
    pub fn bytes(&mut self, seed: &[u8]) -> Vec<u8> {
        if self.below(16) == 0 {
            let len = self.below(512);
            return (0..len).map(|_| self.next_u64() as u8).collect();
        }
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            self.mutate_once(&mut out);
        }
        out
    }

    /// `seed` with one to four mutations that keep it text: interesting tokens written over
    /// digits or inserted anywhere, lines deleted or duplicated, and byte mutations.
    pub fn text(&mut self, seed: &str) -> String {
        let mut out = seed.to_string();
        for _ in 0..1 + self.below(4) {
            match self.below(5) {
                0 => {
                    // Replace a run of digits with an interesting token.
                    let digits: Vec<usize> =
                        out.char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
                    if let Some(&start) = digits.get(self.below(digits.len().max(1))) {
                        let end = out[start..].find(|c: char| !c.is_ascii_digit()).map_or(out.len(), |n| start + n);
                        let token = INTERESTING_TEXT[self.below(INTERESTING_TEXT.len())];
                        out.replace_range(start..end, token);
                    }
                }
                1 => {
                    let at = self.char_boundary(&out);
                    let token = INTERESTING_TEXT[self.below(INTERESTING_TEXT.len())];
                    out.insert_str(at, token);
                }
                2 => {
                    let mut lines: Vec<&str> = out.lines().collect();
                    if !lines.is_empty() {
                        let i = self.below(lines.len());
                        if self.below(2) == 0 {
                            lines.remove(i);
                        } else {
                            lines.insert(i, lines[i]);
                        }
                    }
                    out = lines.join("\n");
                }
                _ => {
                    let mut bytes = out.into_bytes();
                    self.mutate_once(&mut bytes);
                    out = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
        }
        out
    }

    fn char_boundary(&mut self, text: &str) -> usize {
        let mut at = self.below(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    }

    fn mutate_once(&mut self, out: &mut Vec<u8>) {
        let len = out.len();
        match self.below(8) {
            0 if len > 0 => {
                let i = self.below(len);
                out[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let width = [1usize, 2, 4, 8][self.below(4)].min(len);
                let at = self.below(len - width + 1);
                let value = INTERESTING[self.below(INTERESTING.len())];
                let bytes = if self.below(2) == 0 { value.to_le_bytes() } else { value.to_be_bytes() };
                let from = if bytes[0] == 0 && self.below(2) == 0 { 8 - width } else { 0 };
                out[at..at + width].copy_from_slice(&bytes[from..from + width]);
            }
            2 => out.truncate(self.below(len + 1)),
            3 if len > 0 => {
                let start = self.below(len);
                let end = (start + 1 + self.below(64)).min(len);
                out.drain(start..end);
            }
            4 if len > 0 => {
                let start = self.below(len);
                let end = (start + 1 + self.below(64)).min(len);
                let run = out[start..end].to_vec();
                let at = self.below(len + 1);
                out.splice(at..at, run);
            }
            5 => {
                let at = self.below(len + 1);
                let run: Vec<u8> = (0..1 + self.below(16)).map(|_| self.next_u64() as u8).collect();
                out.splice(at..at, run);
            }
            6 if len > 0 => {
                let i = self.below(len);
                out[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'\n'][self.below(7)];
            }
            _ => {
                let tail: Vec<u8> = (0..self.below(32)).map(|_| self.next_u64() as u8).collect();
                out.extend(tail);
            }
        }
    }
}
