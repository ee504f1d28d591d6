//! The one pass over a document's text that the CPU stages share. It yields, together:
//! - the quality filter's words: whitespace tokens trimmed of the characters that are neither
//!   letters nor digits (`split_whitespace` then `trim_matches(!alphanumeric)`), with the counts
//!   its first rules need (words with a letter, characters, stop words);
//! - dedup's normalized words ([`crate::normalize`]'s rules), which travel with the document
//!   ([`Document::words`]) so that exact and near dedup neither re-scan nor re-lowercase the text.
//!
//! Both come from the same tokens: a whitespace token with a letter or digit is a word of the
//! filter, and (with punctuation stripped, the default) exactly such a token is a word of dedup.
//! ASCII bytes take a table-driven path; other characters go through `char`'s Unicode properties,
//! so the results are those of the char-by-char definitions, which the tests check.

use webscale_rl_records::{Derived, Document, NormalizedWords};

use crate::normalize::{ASCII_CLASS, DIGIT, LETTER, NormalizeConfig, WHITESPACE};

/// Gopher's stop words; the quality filter wants `min_stop_words` distinct ones.
pub const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];

/// What the pass finds in one text. Keep one per worker and [`Words::scan`] into it: the buffers
/// are reused from one document to the next.
#[derive(Debug, Default)]
pub struct Words {
    /// (byte offset, byte length) of each of the filter's words in the text.
    pub spans: Vec<(u32, u32)>,
    /// Words containing a letter.
    pub alpha_words: usize,
    /// Characters (not bytes) in the words.
    pub word_chars: usize,
    /// Bit i: `STOP_WORDS[i]` occurs as a word (any ASCII case).
    pub stop_mask: u8,
    /// The text normalized, with where each word starts.
    pub normalized: NormalizedWords,
    /// The Unicode properties of the non-ASCII characters met lately.
    chars: CharCache,
    masks: Masks,
    /// Scratch for the normalized text and its word starts.
    buf: Vec<u8>,
    starts: Vec<u32>,
}

/// One bit per byte of the text, for each class the scan asks about, 64 bytes a word.
#[derive(Debug, Default)]
struct Masks {
    words: [Vec<u64>; 5],
}

impl Masks {
    const WHITESPACE: usize = 0;
    const NON_ASCII: usize = 1;
    /// Bytes normalization keeps as they are ([`VERBATIM`]).
    const VERBATIM: usize = 2;
    const LETTER: usize = 3;
    /// ASCII letters and digits.
    const ALNUM: usize = 4;

    /// Classifies every byte: 16 at a time with SSE2 (part of every x86-64 CPU), byte by
    /// byte elsewhere and for the tail.
    fn build(&mut self, bytes: &[u8], cfg: &NormalizeConfig) {
        let chunks = bytes.len().div_ceil(64);
        for m in &mut self.words {
            m.clear();
            m.resize(chunks, 0);
        }
        let (lowercase, fold_digits) = (cfg.lowercase, cfg.fold_digits);
        #[cfg(target_arch = "x86_64")]
        let done = {
            let whole = bytes.len() / 16 * 16;
            for at in (0..whole).step_by(16) {
                let block: &[u8; 16] = bytes[at..at + 16].try_into().expect("16 bytes");
                let classes = sse2::classify(block, lowercase, fold_digits);
                let (w, shift) = (at / 64, at % 64);
                for (class, mask) in classes.into_iter().enumerate() {
                    self.words[class][w] |= u64::from(mask) << shift;
                }
            }
            whole
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (at, &b) in bytes.iter().enumerate().skip(done) {
            let (w, bit) = (at / 64, 1u64 << (at % 64));
            for (class, is) in classify(b, lowercase, fold_digits).into_iter().enumerate() {
                if is {
                    self.words[class][w] |= bit;
                }
            }
        }
    }

    /// The first byte at or after `at` whose bit in `class` is `set`; past the end if none.
    #[inline]
    fn next(&self, class: usize, at: usize, set: bool) -> usize {
        let words = &self.words[class];
        let mut w = at / 64;
        let flip = if set { 0 } else { u64::MAX };
        let Some(&first) = words.get(w) else {
            return at;
        };
        let mut bits = (first ^ flip) >> (at % 64);
        if bits != 0 {
            return at + bits.trailing_zeros() as usize;
        }
        loop {
            w += 1;
            match words.get(w) {
                None => return w * 64,
                Some(&word) => {
                    bits = word ^ flip;
                    if bits != 0 {
                        return w * 64 + bits.trailing_zeros() as usize;
                    }
                }
            }
        }
    }

    /// Whether any byte of `from..to` has its bit in `class` (`set`), or lacks it.
    #[inline]
    fn any_is(&self, class: usize, from: usize, to: usize, set: bool) -> bool {
        if from >= to {
            return false;
        }
        let flip = if set { 0 } else { u64::MAX };
        let (w, off, len) = (from / 64, from % 64, to - from);
        if off + len <= 64 {
            // Within one word, as most tokens are: a shift and a mask.
            let span = if len == 64 {
                u64::MAX
            } else {
                (1u64 << len) - 1
            };
            return ((self.words[class][w] ^ flip) >> off) & span != 0;
        }
        let words = &self.words[class];
        let (first, last) = (from / 64, (to - 1) / 64);
        (first..=last).any(|w| {
            let mut bits = words[w] ^ flip;
            if w == first {
                bits &= u64::MAX << (from % 64);
            }
            if w == last {
                bits &= u64::MAX >> (63 - (to - 1) % 64);
            }
            bits != 0
        })
    }

    /// Whether any byte of `from..to` has its bit in `class`.
    #[inline]
    fn any(&self, class: usize, from: usize, to: usize) -> bool {
        self.any_is(class, from, to, true)
    }

    /// Whether every byte of `from..to` has its bit in `class`.
    #[inline]
    fn all(&self, class: usize, from: usize, to: usize) -> bool {
        !self.any_is(class, from, to, false)
    }

    /// The bits of `class` for the 64 bytes from `at` (zero past the end of the text).
    #[inline]
    fn window(&self, class: usize, at: usize) -> u64 {
        let words = &self.words[class];
        let (w, off) = (at / 64, at % 64);
        let low = words[w] >> off;
        match (off, words.get(w + 1)) {
            (1.., Some(&next)) => low | next << (64 - off),
            _ => low,
        }
    }
}

/// The properties the pass asks of a non-ASCII character, remembered in a small direct-mapped
/// table: web text repeats few of them (curly quotes, dashes, accented letters), and each
/// `char` lookup is a search in Unicode's tables.
#[derive(Debug)]
struct CharCache {
    entries: Box<[(char, u8); 256]>,
}

const IS_WHITESPACE: u8 = 1;
const IS_ALPHANUMERIC: u8 = 2;
const IS_ALPHABETIC: u8 = 4;
/// `to_lowercase` is the character itself.
const OWN_LOWERCASE: u8 = 8;

impl Default for CharCache {
    fn default() -> Self {
        // ASCII NUL never reaches the cache, so it marks an empty entry.
        CharCache {
            entries: Box::new([('\0', 0); 256]),
        }
    }
}

impl CharCache {
    #[inline]
    fn get(&mut self, c: char) -> u8 {
        let entry = &mut self.entries[c as usize & 255];
        if entry.0 != c {
            let mut lower = c.to_lowercase();
            let own = lower.next() == Some(c) && lower.next().is_none();
            let flag = |has: bool, bit: u8| if has { bit } else { 0 };
            let flags = flag(c.is_whitespace(), IS_WHITESPACE)
                | flag(c.is_alphanumeric(), IS_ALPHANUMERIC)
                | flag(c.is_alphabetic(), IS_ALPHABETIC)
                | flag(own, OWN_LOWERCASE);
            *entry = (c, flags);
        }
        entry.1
    }
}

/// A byte's classes: ASCII whitespace, non-ASCII, kept as it is by normalization (a lowercase
/// letter; an uppercase one when case is kept; a digit unless digits are folded), ASCII letter,
/// ASCII letter or digit.
fn classify(b: u8, lowercase: bool, fold_digits: bool) -> [bool; 5] {
    let lower = b.is_ascii_lowercase();
    let upper = b.is_ascii_uppercase();
    [
        matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b >= 0x80,
        lower || (upper && !lowercase) || (b.is_ascii_digit() && !fold_digits),
        lower || upper,
        b.is_ascii_alphanumeric(),
    ]
}

/// 16 ASCII bytes as normalization writes them: uppercase letters lowercased and digits folded
/// to `0` when `cfg` says so, anything else as it is.
#[inline]
fn normalize_16(block: &[u8; 16], cfg: &NormalizeConfig) -> [u8; 16] {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::normalize(block, cfg.lowercase, cfg.fold_digits)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        block.map(|b| match b {
            b'A'..=b'Z' if cfg.lowercase => b | 0x20,
            b'0'..=b'9' if cfg.fold_digits => b'0',
            _ => b,
        })
    }
}

/// [`classify`] for 16 bytes at once, as five 16-bit masks.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Bytes of `v` in `lo..=hi` (as unsigned bytes).
    #[inline(always)]
    fn within(v: __m128i, lo: u8, hi: u8) -> __m128i {
        // SAFETY (all intrinsics here): SSE2 is part of the x86-64 baseline.
        unsafe {
            let shifted = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
            let span = _mm_set1_epi8((hi - lo) as i8);
            _mm_cmpeq_epi8(_mm_min_epu8(shifted, span), shifted)
        }
    }

    /// [`super::normalize_16`].
    #[inline(always)]
    pub(super) fn normalize(block: &[u8; 16], lowercase: bool, fold_digits: bool) -> [u8; 16] {
        // SAFETY: `block` is 16 readable bytes and `out` 16 writable ones; SSE2 is part of the
        // x86-64 baseline.
        unsafe {
            let mut v = _mm_loadu_si128(block.as_ptr().cast());
            if lowercase {
                let upper = within(v, b'A', b'Z');
                v = _mm_or_si128(v, _mm_and_si128(upper, _mm_set1_epi8(0x20)));
            }
            if fold_digits {
                let digit = within(v, b'0', b'9');
                v = _mm_or_si128(
                    _mm_andnot_si128(digit, v),
                    _mm_and_si128(digit, _mm_set1_epi8(b'0' as i8)),
                );
            }
            let mut out = [0u8; 16];
            _mm_storeu_si128(out.as_mut_ptr().cast(), v);
            out
        }
    }

    #[inline(always)]
    pub(super) fn classify(block: &[u8; 16], lowercase: bool, fold_digits: bool) -> [u16; 5] {
        // SAFETY: `block` is 16 readable bytes; SSE2 is part of the x86-64 baseline.
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast());
            let mask = |m: __m128i| _mm_movemask_epi8(m) as u16;
            let ws = _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)),
                within(v, 0x09, 0x0d),
            );
            let lower = mask(within(v, b'a', b'z'));
            let upper = mask(within(v, b'A', b'Z'));
            let digit = mask(within(v, b'0', b'9'));
            let verbatim =
                lower | if lowercase { 0 } else { upper } | if fold_digits { 0 } else { digit };
            [
                mask(ws),
                mask(v),
                verbatim,
                lower | upper,
                lower | upper | digit,
            ]
        }
    }
}

/// The stop-word key of a word whose first four bytes (zero past its end) are `head`, little
/// endian: each of its bytes with bit 5 set, which lowercases an ASCII letter, and 0 for a word
/// longer than four bytes. A byte with bit 5 set equals a lowercase letter only if it was that
/// letter in either case, and every byte of a word gets a bit, so two keys are equal only for
/// the same word up to ASCII case. No branch: the test runs for every word, and a branch on the
/// length mispredicted so often that it cost 30 ms of the 160 ms pass over the bench corpus.
#[inline]
const fn stop_key(head: u32, len: usize) -> u32 {
    let short = len <= 4;
    let kept = ((1u64 << (8 * if short { len } else { 4 })) - 1) as u32;
    (head | 0x2020_2020) & kept & (short as u32).wrapping_neg()
}

/// The first four bytes of `word`, little endian, zero past its end.
const fn head(word: &[u8]) -> u32 {
    let mut key = 0u32;
    let mut i = 0;
    while i < word.len() && i < 4 {
        key |= (word[i] as u32) << (8 * i);
        i += 1;
    }
    key
}

/// [`STOP_WORDS`]' keys.
const STOP_KEYS: [u32; 8] = {
    let mut keys = [0u32; 8];
    let mut k = 0;
    while k < 8 {
        let word = STOP_WORDS[k].as_bytes();
        keys[k] = stop_key(head(word), word.len());
        k += 1;
    }
    keys
};

impl NormalizeConfig {
    /// The rules as bits, recorded in [`NormalizedWords::rules`].
    pub fn rules(&self) -> u8 {
        self.lowercase as u8 | (self.strip_punctuation as u8) << 1 | (self.fold_digits as u8) << 2
    }
}

impl Words {
    /// Scans `text`: the filter's words and counts, and the text normalized per `cfg`.
    ///
    /// First one branch-free pass classifies every byte into bitmaps (ASCII whitespace,
    /// non-ASCII, kept as it is, letter, letter or digit), 64 bytes a word. Tokens are then
    /// found from the bitmaps. A short ASCII token whose kept bytes are one run (most of prose)
    /// is written in one step: 16 bits of the bitmaps and one normalizing 16-byte copy. Of the
    /// rest, a token of bytes kept as they are is copied whole, other ASCII tokens go byte by
    /// byte, and a token with a non-ASCII byte goes char by char through the Unicode
    /// properties.
    pub fn scan(&mut self, text: &str, cfg: &NormalizeConfig) {
        self.spans.clear();
        (self.alpha_words, self.word_chars, self.stop_mask) = (0, 0, 0);
        let bytes = text.as_bytes();
        let n = bytes.len();
        self.masks.build(bytes, cfg);
        // Words are written to reused scratch buffers and copied out at the end at their exact
        // size: the normalized words travel with the document, and should not carry slack.
        let starts = &mut self.starts;
        starts.clear();
        self.spans.reserve(n / 4 + 8);
        // Written by index into a buffer sized for the worst case: lowercasing grows a
        // character by at most half (U+0130 'İ', two bytes, is "i̇", three), a space replaces
        // at least one byte of whitespace, and 16-byte copies may run past a token's end.
        let out = &mut self.buf;
        if out.len() < n + n / 2 + 64 {
            out.resize(n + n / 2 + 64, 0);
        }
        let mut j = 0;
        let masks = &self.masks;
        let mut i = 0;
        while i < n {
            i = masks.next(Masks::WHITESPACE, i, false);
            if i >= n {
                break;
            }
            if bytes[i] >= 0x80 {
                let c = char_at(text, i);
                if self.chars.get(c) & IS_WHITESPACE != 0 {
                    i += c.len_utf8();
                    continue;
                }
            }
            // A token runs to the next whitespace: ASCII from the bitmap, or any other the
            // char-by-char path finds.
            let end = masks.next(Masks::WHITESPACE, i, true).min(n);
            let mark = j;
            if j > 0 {
                out[j] = b' ';
                j += 1;
            }
            let word_start = j;
            let (mut first, mut last_end) = (usize::MAX, 0);
            let (mut alpha, mut ascii) = (false, true);
            let len = end - i;
            // A short ASCII token (most of prose) in one step without a branch on what it
            // holds: the bitmaps' 16 bits from its start give its letters and digits, and one
            // normalizing 16-byte copy writes what it keeps. With punctuation stripped that is
            // its run from the first letter or digit to the last, if no punctuation interrupts
            // it ("don't" and "U.S." go the long way); otherwise the whole token.
            let keep = (1u64 << len.min(63)) - 1;
            let short = len <= 16 && i + 32 <= n && masks.window(Masks::NON_ASCII, i) & keep == 0;
            let alnum = masks.window(Masks::ALNUM, i) & keep;
            let lead = alnum.trailing_zeros() as usize;
            let run = alnum >> lead.min(63);
            if short && alnum == 0 && cfg.strip_punctuation {
                // Symbols only ("-", "|", "..."): nothing kept, and not a word.
                j = mark;
                i = end;
                continue;
            }
            if short && alnum != 0 && (!cfg.strip_punctuation || run & (run + 1) == 0) {
                let span = 64 - alnum.leading_zeros() as usize - lead;
                let (from, kept) = if cfg.strip_punctuation {
                    (i + lead, span)
                } else {
                    (i, len)
                };
                let block: &[u8; 16] = bytes[from..from + 16].try_into().expect("16 bytes");
                out[j..j + 16].copy_from_slice(&normalize_16(block, cfg));
                j += kept;
                (first, last_end) = (i + lead, i + lead + span);
                alpha = masks.window(Masks::LETTER, i) & keep != 0;
                i = end;
            } else if masks.all(Masks::VERBATIM, i, end) {
                if len <= 16 && i + 16 <= n {
                    out[j..j + 16].copy_from_slice(&bytes[i..i + 16]);
                } else {
                    out[j..j + len].copy_from_slice(&bytes[i..end]);
                }
                j += len;
                (first, last_end) = (i, end);
                alpha = masks.any(Masks::LETTER, i, end);
                i = end;
            } else {
                // Byte by byte: ASCII through the table, other chars through their Unicode
                // properties, to the next whitespace of either kind.
                while i < n {
                    let b = bytes[i];
                    if b < 128 {
                        match ASCII_CLASS[b as usize] {
                            WHITESPACE => break,
                            LETTER => {
                                first = first.min(i);
                                last_end = i + 1;
                                alpha = true;
                                out[j] = if cfg.lowercase { b | 0x20 } else { b };
                                j += 1;
                            }
                            DIGIT => {
                                first = first.min(i);
                                last_end = i + 1;
                                out[j] = if cfg.fold_digits { b'0' } else { b };
                                j += 1;
                            }
                            _ => {
                                if !cfg.strip_punctuation {
                                    out[j] = b;
                                    j += 1;
                                }
                            }
                        }
                        i += 1;
                        continue;
                    }
                    let c = char_at(text, i);
                    let flags = self.chars.get(c);
                    if flags & IS_WHITESPACE != 0 {
                        break;
                    }
                    ascii = false;
                    let len = c.len_utf8();
                    let alphanumeric = flags & IS_ALPHANUMERIC != 0;
                    if alphanumeric {
                        first = first.min(i);
                        last_end = i + len;
                        alpha |= flags & IS_ALPHABETIC != 0;
                    }
                    if alphanumeric || !cfg.strip_punctuation {
                        if flags & OWN_LOWERCASE != 0 || !cfg.lowercase {
                            out[j..j + len].copy_from_slice(&bytes[i..i + len]);
                            j += len;
                        } else {
                            for lower in c.to_lowercase() {
                                j += lower.encode_utf8(&mut out[j..]).len();
                            }
                        }
                    }
                    i += len;
                }
            }
            if j == word_start {
                j = mark; // nothing of the token is kept: no word, no space
            } else {
                starts.push(word_start as u32);
            }
            if first == usize::MAX {
                continue; // a symbol-only token ("-", "|", "..."): not a word
            }
            let word = &bytes[first..last_end];
            self.spans.push((first as u32, word.len() as u32));
            self.alpha_words += alpha as usize;
            self.word_chars += if ascii {
                word.len()
            } else {
                text[first..last_end].chars().count()
            };
            let head = match bytes.get(first..first + 4) {
                Some(four) => u32::from_le_bytes(four.try_into().expect("4 bytes")),
                None => head(word),
            };
            let key = stop_key(head, word.len());
            for (k, &stop) in STOP_KEYS.iter().enumerate() {
                self.stop_mask |= u8::from(key == stop) << k;
            }
        }
        let norm = &mut self.normalized;
        norm.rules = cfg.rules();
        norm.source_len = n;
        norm.text.clear();
        norm.text.push_str(
            std::str::from_utf8(&out[..j]).expect("ASCII bytes and whole chars are UTF-8"),
        );
        norm.starts.clear();
        norm.starts.extend_from_slice(starts);
    }

    /// Moves the normalized words out, to travel with their document.
    pub fn take_normalized(&mut self) -> Derived<NormalizedWords> {
        Derived::new(std::mem::take(&mut self.normalized))
    }
}

/// The char starting at byte `i` of `text`.
#[inline]
fn char_at(text: &str, i: usize) -> char {
    text[i..].chars().next().expect("a char starts here")
}

/// The document's normalized words if they were made with `cfg`'s rules from its present text
/// (by the quality filter's pass), so a dedup stage can use them as they are.
pub fn normalized<'d>(doc: &'d Document, cfg: &NormalizeConfig) -> Option<&'d NormalizedWords> {
    doc.words
        .get()
        .filter(|w| w.rules == cfg.rules() && w.source_len == doc.text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::reference::{self, every_rule_set};

    /// The definitions the pass must agree with, char by char.
    fn reference(text: &str, cfg: &NormalizeConfig) -> Words {
        let mut w = Words::default();
        for token in text.split_whitespace() {
            let word = token.trim_matches(|c: char| !c.is_alphanumeric());
            if word.is_empty() {
                continue;
            }
            let at = word.as_ptr() as usize - text.as_ptr() as usize;
            w.spans.push((at as u32, word.len() as u32));
            w.alpha_words += word.chars().any(char::is_alphabetic) as usize;
            w.word_chars += word.chars().count();
            for (k, stop) in STOP_WORDS.iter().enumerate() {
                if word.eq_ignore_ascii_case(stop) {
                    w.stop_mask |= 1 << k;
                }
            }
        }
        let (normalized, starts) = reference::words(text, cfg);
        w.normalized.text = normalized;
        w.normalized.starts = starts.into_iter().map(|s| s as u32).collect();
        w.normalized.rules = cfg.rules();
        w.normalized.source_len = text.len();
        w
    }

    fn assert_same(text: &str, cfg: &NormalizeConfig) {
        let mut got = Words::default();
        got.scan(text, cfg);
        let want = reference(text, cfg);
        let what = format!("{text:?} {cfg:?}");
        assert_eq!(got.spans, want.spans, "spans of {what}");
        assert_eq!(
            (got.alpha_words, got.word_chars, got.stop_mask),
            (want.alpha_words, want.word_chars, want.stop_mask),
            "counts of {what}"
        );
        assert_eq!(got.normalized.text, want.normalized.text, "{what}");
        assert_eq!(got.normalized.starts, want.normalized.starts, "{what}");
    }

    #[test]
    fn agrees_with_the_char_definitions_under_every_rule() {
        let every_ascii: String = (0u8..128).map(char::from).collect();
        let texts = [
            "  Hello,\n\n  World!  The cat -- and THE dog... (with) 'quotes' be-to",
            "Caf\u{e9} \u{c9}T\u{c9}\u{a0}2024\u{2014}x \u{130}stanbul \u{1F600}! \u{2167}x",
            "tab\tvt\u{b}ff\u{c}cr\r\u{85}nel\u{3000}ideographic\u{2028}sep",
            "a ! b\u{ff01}c d_e-f 'q' \u{feff}z \u{0663}\u{0664} \u{00bd}",
            "--- *** ... \u{2026} \u{00b7}",
            // Stop words in any case, with punctuation at their edges, near misses (prefixes,
            // longer words, symbols and digits inside), and one ending the text.
            "tHe\tBE (Of), AND. thaT hAvE WITH th thee bee tha t@e a^d th3 0f ha\u{e9} be",
            "haves withy thats",
            "the\u{0} to",
            // Characters sharing a slot of the property cache (same low byte): a thin space
            // and letters, upper and lower case.
            "a\u{2009}\u{109}\u{108}\u{2009}\u{e9}\u{1e9}\u{1e8} \u{c9}\u{2c9}x\u{2009}\u{109}",
            "",
            "   ",
            every_ascii.as_str(),
        ];
        for cfg in every_rule_set() {
            for text in texts {
                assert_same(text, &cfg);
            }
        }
    }

    #[test]
    fn short_ascii_tokens_agree_at_every_alignment() {
        // Tokens for the one-step path (capitalised, digits, punctuation at the edges, 16 bytes,
        // symbols only) and for the long ways (punctuation inside, longer than 16 bytes), at
        // every offset of a 64-bit bitmap word, followed by more text (the one-step path reads
        // 16 bytes past a token's start) and again at the text's end (where it cannot).
        let tokens = [
            "The",
            "(Hello),",
            "ABCDEFGHIJKLMNOP",
            "0123456789abcdefg",
            "\"Quoted\"",
            "Year2024.",
            "don't",
            "U.S.A.",
            "--",
            "x",
            "MiXeD-CaSe",
            "...Ellipsis...",
        ];
        for shift in 0..64 {
            for token in tokens {
                let text = format!(
                    "{}{token} and some more words to follow it, {token}",
                    " ".repeat(shift)
                );
                for cfg in every_rule_set() {
                    assert_same(&text, &cfg);
                }
            }
        }
    }

    #[test]
    fn agrees_on_the_sample() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/web/sample.jsonl"
        );
        let data = std::fs::read_to_string(path).expect("the tests' sample");
        for line in data.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_same(v["text"].as_str().unwrap(), &NormalizeConfig::default());
        }
    }

    /// A document carrying normalized words that are not its text's: what a stage reads shows
    /// whether it used the carried words or normalized the text again.
    fn carrying(id: &str, text: &str, carried: &str, cfg: &NormalizeConfig) -> Document {
        let mut doc = crate::testing::document(id, text);
        let mut w = Words::default();
        w.scan(carried, cfg);
        w.normalized.source_len = text.len(); // as if made from this text
        doc.words = w.take_normalized();
        doc
    }

    #[test]
    fn the_quality_filter_leaves_the_words_for_dedup() {
        use crate::quality_filter::{QualityFilter, QualityFilterConfig};
        use crate::testing::{document, run_stage};
        let text = "The river rises in the hills to the north of the town, and it runs for many \
            miles through farms and forests before it reaches the sea. In the spring the water \
            is high and fast, and the fishermen wait for the summer, when it is slow and clear.";
        let (passed, _) = run_stage(vec![document("d", text)], |docs| {
            docs.quality_filter(QualityFilterConfig {
                min_words: 1,
                ..Default::default()
            })
        });
        let cfg = NormalizeConfig::default();
        let words = normalized(&passed[0], &cfg).expect("the filter's pass left the words");
        assert_eq!(words.text, reference::words(text, &cfg).0);
        // Made with other rules, they are not offered.
        let other = NormalizeConfig {
            fold_digits: true,
            ..cfg
        };
        assert!(normalized(&passed[0], &other).is_none());
        // Nor once the text has changed under them.
        let mut edited = passed[0].clone();
        edited.text.push_str(" And more.");
        assert!(normalized(&edited, &cfg).is_none());
    }

    #[test]
    fn exact_dedup_keys_on_the_carried_words_and_only_under_their_rules() {
        use crate::exact_dedup::{ExactDedup, ExactDedupConfig};
        use crate::testing::run_stage;
        let cfg = NormalizeConfig::default();
        // Different texts carrying the same words: the stage must see one text twice.
        let input = vec![
            carrying("a", "first text", "same words", &cfg),
            carrying("b", "second text", "same words", &cfg),
        ];
        let (_, copies) = run_stage(input, |d| d.exact_dedup(ExactDedupConfig::default()));
        assert_eq!(copies.len(), 1, "the carried words were not used");
        // Words made under other rules are ignored: the texts differ, nothing is a copy.
        let other = NormalizeConfig {
            lowercase: false,
            ..cfg
        };
        let input = vec![
            carrying("a", "first text", "same words", &other),
            carrying("b", "second text", "same words", &other),
        ];
        let (kept, _) = run_stage(input, |d| d.exact_dedup(ExactDedupConfig::default()));
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn near_dedup_signs_the_carried_words() {
        use crate::minhash::{MinHasher, NearDedupConfig};
        let near = NearDedupConfig::default();
        let mut hasher = MinHasher::new(&near);
        let text = "Rivers carry water from the hills down to the sea through valleys and plains.";
        let other =
            "A recipe for bread with flour, water, salt and yeast, baked for an hour or so.";
        let (mut from_text, mut from_words) = (Vec::new(), Vec::new());
        hasher.signature_into(text, &mut from_text);
        let doc = carrying("d", other, text, &near.normalize);
        hasher.signature_of(&doc, &mut from_words);
        assert_eq!(from_words, from_text, "the carried words were not used");
        // Without words (or with another rule's), the document's own text is signed.
        let bare = crate::testing::document("d", other);
        let mut own = Vec::new();
        hasher.signature_into(other, &mut own);
        hasher.signature_of(&bare, &mut from_words);
        assert_eq!(from_words, own);
    }

    #[test]
    fn the_bitmaps_agree_with_the_byte_rules() {
        // Every byte value at every position of a 16-byte block, across 64-bit words.
        let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).chain([b'a'; 45]).collect();
        for (lowercase, fold_digits) in [(false, false), (false, true), (true, false), (true, true)]
        {
            let cfg = NormalizeConfig {
                lowercase,
                fold_digits,
                ..NormalizeConfig::default()
            };
            let mut m = Masks::default();
            m.build(&bytes, &cfg);
            for (at, &b) in bytes.iter().enumerate() {
                let want = classify(b, lowercase, fold_digits);
                for (class, &is) in want.iter().enumerate() {
                    assert_eq!(
                        m.any(class, at, at + 1),
                        is,
                        "byte {b:#x} at {at}, class {class}"
                    );
                }
            }
            // Ranges across word boundaries, against a plain scan.
            for (from, to) in [(0, 0), (3, 70), (60, 130), (64, 128), (500, bytes.len())] {
                for class in 0..5 {
                    let plain = (from..to).filter(|&at| m.any(class, at, at + 1)).count();
                    assert_eq!(m.any(class, from, to), plain > 0);
                    assert_eq!(m.all(class, from, to), plain == to - from);
                    let next = (from..bytes.len()).find(|&at| m.any(class, at, at + 1));
                    assert_eq!(
                        m.next(class, from, true).min(bytes.len()),
                        next.unwrap_or(bytes.len())
                    );
                }
            }
        }
    }

    #[test]
    fn words_of_the_normalized_text() {
        let mut w = Words::default();
        w.scan("The  cat's -- HAT.", &NormalizeConfig::default());
        let words: Vec<&str> = w.normalized.words().collect();
        assert_eq!(words, ["the", "cats", "hat"]);
        w.scan(" -- ", &NormalizeConfig::default());
        assert_eq!(w.normalized.words().count(), 0);
    }
}
