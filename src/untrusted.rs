//! Text a client chose (user name, vhost, connection name, queue names), as
//! warren's logs, metrics and admin API show it.
//!
//! Shown raw, such text is an injection channel: a newline in a user name
//! sent before authentication forges a line in the text log, terminal escape
//! sequences rewrite an operator's screen, and a 100 KB connection name
//! turns every log line and `/api/clients` entry about that client into
//! 100 KB. So such text is cut after [`SHOWN_MAX`] bytes, and escaped:
//! - in log lines it is recorded as a string field ([`cut`]): the text
//!   format writes it quoted with Rust's escapes (`"a\nb"`, `\u{1b}`,
//!   `\u{202e}`), so it cannot end the line or pose as another field, and
//!   the JSON format writes a JSON string;
//! - in the admin API and metric labels ([`shown`]) control and
//!   bidirectional-formatting characters are escaped the same way, and
//!   `...(N bytes)` says how long the text was.

use std::fmt::{self, Display, Write};

/// Bytes of client text shown; the rest is replaced by `...(N bytes)`.
pub const SHOWN_MAX: usize = 256;

/// Client text as a log field: at most [`SHOWN_MAX`] bytes of it, cut on a
/// character boundary.
pub fn cut(text: &str) -> &str {
    if text.len() <= SHOWN_MAX {
        return text;
    }
    let end = (0..=SHOWN_MAX)
        .rev()
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(0);
    &text[..end]
}

/// Displays client text escaped and cut (see the module doc).
struct Untrusted<'a>(&'a str);

/// Characters that change how the text around them is displayed: C0 and C1
/// controls, DEL, and the Unicode bidirectional overrides and isolates.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        for (at, c) in text.char_indices() {
            if at + c.len_utf8() > SHOWN_MAX {
                return write!(f, "...({} bytes)", text.len());
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                c if needs_escape(c) => write!(f, "{}", c.escape_default())?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Text already shown by warren (so its backslashes are escaped), made safe
/// for a terminal again by a reader that does not trust where it came
/// from: control and bidirectional-formatting characters escaped, nothing
/// else changed.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`Untrusted`] as an owned string, for what is kept (the client list).
pub fn shown(text: &str) -> String {
    Untrusted(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escapes_cannot_leave_the_field() {
        assert_eq!(
            shown("guest\n2026-12-04T00:00:00Z  INFO forged"),
            "guest\\n2026-12-04T00:00:00Z  INFO forged"
        );
        assert_eq!(shown("a\r\u{1b}[2Jb\u{7f}"), "a\\r\\u{1b}[2Jb\\u{7f}");
        assert_eq!(shown("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        // An escaped text cannot be confused with one that spelled the escape.
        assert_ne!(shown("a\\nb"), shown("a\nb"));
    }

    #[test]
    fn ordinary_text_is_shown_as_is() {
        for text in ["guest", "/", "my-app (worker 3)", "Zürich ✓", "日本語"] {
            assert_eq!(shown(text), text);
        }
    }

    #[test]
    fn log_fields_are_cut_on_a_character_boundary() {
        assert_eq!(cut("guest"), "guest");
        let long = "é".repeat(1000);
        assert_eq!(cut(&long), "é".repeat(SHOWN_MAX / 2));
        let odd = format!("x{long}");
        assert_eq!(cut(&odd).len(), SHOWN_MAX - 1);
        // What the text log does with a field recorded as a string.
        assert_eq!(
            format!("{:?}", cut("a\n\u{1b}[2J\u{202e}")),
            "\"a\\n\\u{1b}[2J\\u{202e}\""
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_its_length() {
        let long = "é".repeat(1000);
        let cut = shown(&long);
        assert!(cut.ends_with("...(2000 bytes)"), "{cut}");
        assert_eq!(cut.len(), SHOWN_MAX + "...(2000 bytes)".len());
        let exact = "x".repeat(SHOWN_MAX);
        assert_eq!(shown(&exact), exact);
    }
}
