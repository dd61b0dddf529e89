//! What the server writes to its log, and echoes in error messages, of values that clients
//! choose: always through [`Escaped`], so such a value is bounded and cannot forge a line.

use std::fmt;

/// The most characters of a client-supplied value a log line or error message shows.
pub const ECHOED_CHARS: usize = 200;

/// Displays a client-supplied string cut after [`ECHOED_CHARS`] characters (with how much
/// was left out), its control characters escaped (`\n`, `\u{1b}`, …) and so are the
/// characters that reorder or break a line without being controls: Unicode bidirectional
/// overrides and isolates, and the line and paragraph separators. A value can then neither
/// forge a log line, nor disguise one, nor drive the terminal that shows the log.
pub struct Escaped<'a>(pub &'a str);

/// Characters escaped beside the controls: bidirectional embeddings, overrides and isolates,
/// marks, and the line and paragraph separators (U+2028, U+2029).
fn disguises(c: char) -> bool {
    matches!(
        c,
        '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            | '\u{2028}' | '\u{2029}'
    )
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(ECHOED_CHARS) {
            if c.is_control() || disguises(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        if let Some((at, _)) = chars.next() {
            write!(f, "…({} more bytes)", self.0.len() - at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{ECHOED_CHARS, Escaped};
    use proptest::prelude::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            Escaped("op\nFORGED line \u{1b}[31mred").to_string(),
            "op\\nFORGED line \\u{1b}[31mred"
        );
        assert_eq!(Escaped("plain é").to_string(), "plain é");
        assert_eq!(
            Escaped("a\u{202e}b\u{2028}c\u{2066}").to_string(),
            "a\\u{202e}b\\u{2028}c\\u{2066}"
        );
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(100_000);
        let shown = Escaped(&long).to_string();
        assert_eq!(
            shown,
            format!("{}…(99800 more bytes)", "x".repeat(ECHOED_CHARS))
        );
    }

    proptest! {
        /// Whatever a client sends, what is shown is one line of bounded length with no
        /// character that reorders or breaks it.
        #[test]
        fn any_value_is_one_bounded_line(value in any::<String>()) {
            let shown = Escaped(&value).to_string();
            prop_assert!(shown.chars().count() <= ECHOED_CHARS * 10 + 40);
            prop_assert!(!shown.chars().any(|c| c.is_control() || super::disguises(c)));
        }
    }
}
