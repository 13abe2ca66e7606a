//! The one reversible rendering of kernel byte strings (paths, argv, comm,
//! names, exe) as JSON strings. Linux names are bytes, not text: a string
//! that is valid UTF-8 is stored as it is; an event in which any string is
//! not carries `args.escaped: true`, and then every byte string of that
//! event is in the escaped form:
//!
//! - a byte that is not part of valid UTF-8 becomes `\xNN` (two lowercase
//!   hex digits);
//! - a backslash becomes `\\`;
//! - everything else (valid UTF-8, control characters included) is kept.
//!
//! Escaped forms are distinct for distinct byte strings, and `unrender`
//! gives the bytes back. Filters compare the rendered form.

/// `b` as it is stored: escaped when `escaped` (the event's flag), else
/// as UTF-8, lossily (callers escape the event when `needs_escape(b)`).
pub fn render(b: &[u8], escaped: bool) -> String {
    if !escaped {
        return String::from_utf8_lossy(b).into_owned();
    }
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Whether `b` cannot be stored as it is.
pub fn needs_escape(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_err()
}

/// A string of an escaped event that no `render` produced.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad escape at byte {0} of a rendered string")]
pub struct BadEscape(pub usize);

/// The bytes `s` stands for, given the event's `escaped` flag.
pub fn unrender(s: &str, escaped: bool) -> Result<Vec<u8>, BadEscape> {
    if !escaped {
        return Ok(s.as_bytes().to_vec());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(BadEscape(i))?;
                out.push(hex);
                i += 4;
            }
            _ => return Err(BadEscape(i)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded per test, so a failure reproduces.
    struct Rng(fastrand::Rng);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0.u64(..)
        }

        /// Byte strings biased towards the interesting alphabet: backslash,
        /// 'x', hex digits, lone continuation and lead bytes, valid UTF-8.
        fn bytes(&mut self) -> Vec<u8> {
            const ALPHABET: &[&[u8]] = &[
                b"\\",
                b"x",
                b"f",
                b"F",
                b"0",
                b"a",
                b"\xff",
                b"\x80",
                b"\xc3",
                b"\xe2\x80",
                "é".as_bytes(),
                "\u{202e}".as_bytes(),
                b"\n",
                b"\x1b",
                b"/",
            ];
            let n = (self.next() % 12) as usize;
            let mut v = Vec::new();
            for _ in 0..n {
                if self.next().is_multiple_of(4) {
                    v.push(self.next() as u8);
                } else {
                    let a = ALPHABET[(self.next() % ALPHABET.len() as u64) as usize];
                    v.extend_from_slice(a);
                }
            }
            v
        }
    }

    #[test]
    fn rendering_round_trips_and_keeps_distinct_strings_distinct() {
        let mut rng = Rng(fastrand::Rng::with_seed(0x5eed_1e55));
        let mut seen = std::collections::HashMap::new();
        for _ in 0..200_000 {
            let b = rng.bytes();
            let r = render(&b, true);
            assert_eq!(unrender(&r, true).unwrap(), b, "{b:?} as {r:?}");
            if let Some(other) = seen.insert(r.clone(), b.clone()) {
                assert_eq!(other, b, "{other:?} and {b:?} both render as {r:?}");
            }
            if !needs_escape(&b) {
                let plain = render(&b, false);
                assert_eq!(plain.as_bytes(), b.as_slice());
                assert_eq!(unrender(&plain, false).unwrap(), b);
            }
        }
        assert!(seen.len() > 10_000, "generator too narrow: {}", seen.len());
    }

    #[test]
    fn the_documented_examples() {
        assert_eq!(render(b"a\xffb", true), "a\\xffb");
        assert_eq!(render(b"a\\xffb", true), "a\\\\xffb");
        assert_eq!(render("é\u{202e}".as_bytes(), true), "é\u{202e}");
        assert_eq!(render(b"\xc3", true), "\\xc3");
        assert_eq!(render(b"a\\b", false), "a\\b");
        assert!(needs_escape(b"\xff") && !needs_escape(b"a\\b\n"));
        assert_eq!(unrender("\\q", true), Err(BadEscape(0)));
        assert_eq!(unrender("ab\\x4", true), Err(BadEscape(2)));
        assert_eq!(unrender("\\", true), Err(BadEscape(0)));
    }
}
