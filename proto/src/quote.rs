//! Quoting what a peer sent, with a bound: every status message and log line that repeats client
//! input goes through [`quote`] (one string) or [`clip`] (a whole message that may already hold
//! client input, e.g. a list of ids), so a hostile peer never makes the master echo megabytes.

use std::fmt::Write;

/// Most bytes of escaped text [`quote`] keeps of one string.
pub const QUOTE_BYTES: usize = 256;

/// Most bytes [`clip`] keeps of a whole message.
pub const MESSAGE_BYTES: usize = 1024;

/// `s` as a Rust-style quoted string (control characters escaped), cut after about
/// [`QUOTE_BYTES`] bytes of escaped text; a cut string ends with `...` and states its original
/// length: `"aaaa..." (5242880 bytes)`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(QUOTE_BYTES) + 32);
    out.push('"');
    let mut cut = false;
    for c in s.chars() {
        if out.len() >= QUOTE_BYTES {
            cut = true;
            break;
        }
        // `escape_debug` of one char: `\"`, `\n`, `\u{1}`, or the char itself.
        let _ = write!(out, "{}", c.escape_debug());
    }
    if cut {
        let _ = write!(out, "...\" ({} bytes)", s.len());
    } else {
        out.push('"');
    }
    out
}

/// `message` cut to at most about [`MESSAGE_BYTES`] bytes (at a character boundary), stating the
/// original length when cut. For messages built by code that may quote client input in full.
pub fn clip(message: &str) -> String {
    if message.len() <= MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... (message cut, {} bytes in all)",
        &message[..end],
        message.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_quoted_whole() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn long_strings_are_cut_with_their_length() {
        let big = "x".repeat(5 << 20);
        let q = quote(&big);
        assert!(q.len() < QUOTE_BYTES + 40, "{} bytes", q.len());
        assert!(q.ends_with(&format!("...\" ({} bytes)", 5 << 20)), "{q}");
    }

    #[test]
    fn escaping_cannot_blow_the_bound_up() {
        let control = "\u{1}".repeat(100_000);
        let q = quote(&control);
        assert!(q.len() < QUOTE_BYTES + 40, "{} bytes", q.len());
        assert!(q.contains("100000 bytes"), "{q}");
    }

    #[test]
    fn multibyte_text_is_cut_at_a_character_boundary() {
        let s = "é".repeat(10_000);
        assert!(quote(&s).contains("20000 bytes"));
        let c = clip(&s);
        assert!(c.len() < MESSAGE_BYTES + 64);
        assert!(c.contains("20000 bytes in all"), "{c}");
        assert_eq!(clip("short"), "short");
    }
}
