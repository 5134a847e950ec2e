//! Values from outside (tags, config, IMDS, API error text) in log lines.
//!
//! A log line is one line: a value with a newline could otherwise start a
//! line of its own that looks like a config line or another log record
//! (`ce\nECS_ENABLE_PRIVILEGED=true`). Control characters, Unicode line and
//! paragraph separators and bidirectional overrides are written as escapes
//! (`\n`, `\r`, `\t`, `\u{202e}`); everything else is shown as is.
//!
//! Backslashes are left alone, so escaping is idempotent: a message built
//! from escaped values can be escaped once more as a whole without doubling
//! anything.

use std::fmt::{self, Write};

/// `value` for a log line; see the module docs.
pub fn escaped(value: &str) -> Escaped<'_> {
    Escaped(value)
}

/// `value` in double quotes, for a log line (inner quotes escaped too).
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// Displays its value escaped; see [`escaped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escaped<'a>(pub &'a str);

/// Displays its value quoted and escaped; see [`quoted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, false)
    }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write_escaped(f, self.0, true)?;
        f.write_char('"')
    }
}

/// The escaped text as an owned string.
pub fn escape(value: &str) -> String {
    escaped(value).to_string()
}

/// Whether `c` must not appear raw in a log line.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{200e}' | '\u{200f}' // left-to-right and right-to-left marks
            | '\u{202a}'..='\u{202e}' // bidirectional embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidirectional isolates
            | '\u{feff}' // byte order mark
        )
}

fn write_escaped(f: &mut fmt::Formatter<'_>, value: &str, quote: bool) -> fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(|c: char| needs_escape(c) || (quote && c == '"')) {
        f.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '"' => f.write_str("\\\"")?,
            other => write!(f, "\\u{{{:x}}}", u32::from(other))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    f.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_start_a_line_of_its_own() {
        let shown = escape("ce\nECS_ENABLE_PRIVILEGED=true");
        assert_eq!(shown, "ce\\nECS_ENABLE_PRIVILEGED=true");
        assert!(!shown.contains('\n'));
    }

    #[test]
    fn control_characters_separators_and_bidi_overrides_are_escaped() {
        assert_eq!(escape("a\r\tb\u{1b}[31m"), "a\\r\\tb\\u{1b}[31m");
        assert_eq!(
            escape("x\u{2028}y\u{202e}z\u{85}"),
            "x\\u{2028}y\\u{202e}z\\u{85}"
        );
        assert_eq!(escape("\u{7f}"), "\\u{7f}");
    }

    #[test]
    fn ordinary_text_and_unicode_are_kept() {
        for plain in ["research-ce", "Zürich 東京 ✓", "a=b \"q\" \\n", ""] {
            assert_eq!(escape(plain), plain);
        }
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = escape("a\nb\u{202e}c\\n");
        assert_eq!(escape(&once), once);
    }

    #[test]
    fn quoted_escapes_inner_quotes() {
        assert_eq!(quoted("a\"b\nc").to_string(), "\"a\\\"b\\nc\"");
    }
}
