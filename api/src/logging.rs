//! What the server writes to its log about values that clients choose.

use std::fmt;

/// Displays a client-supplied string with control characters escaped (`\n`, `\u{1b}`, …),
/// so that a value cannot forge a log line or drive the terminal that shows the log.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            Escaped("op\nFORGED line \u{1b}[31mred").to_string(),
            "op\\nFORGED line \\u{1b}[31mred"
        );
        assert_eq!(Escaped("plain é").to_string(), "plain é");
    }
}
