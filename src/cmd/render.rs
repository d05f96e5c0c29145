//! How commands print states and diffs: pvr's renderings, shared by the work-tree commands
//! (`cmd::repo`) and their mount counterparts (`cmd::mountops`); and [`terminal_safe`], how
//! text that came from elsewhere is printed.

use super::Ctx;
use crate::cli::DiffFormat;
use crate::json;
use crate::patch;
use crate::state::State;
use anyhow::Result;

/// Text that came from elsewhere — a server's error, a state's key, a tar member's name, a
/// commit message posted to `pvrfs serve` — made safe to print on a terminal: control
/// characters (C0, DEL, C1) are shown escaped (`\u{1b}`), so that such text cannot move the
/// cursor, set the window title, clear the screen or fake lines of output. Newlines and tabs are
/// kept when `multiline`. Text without control characters is returned as it is.
pub fn terminal_safe(text: &str, multiline: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !(multiline && (c == '\n' || c == '\t'));
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The diff from `old` to `new`: pvr's merge patch (`diff`) or an RFC 6902 patch.
pub fn render_patch(old: &State, new: &State, format: DiffFormat) -> String {
    match format {
        DiffFormat::Merge => json::render_diff(&patch::state_merge_diff(old, new)),
        DiffFormat::Rfc6902 => json::to_pvr_json_pretty(&patch::state_json_patch(old, new)),
    }
}

/// A state as `pvr json` prints it (tab-indented), or canonical on one line.
pub fn print_state(state: &State, canonical: bool, ctx: &mut Ctx<'_>) -> Result<()> {
    let value = state.to_value();
    if canonical {
        ctx.out.write_all(&json::to_canonical(&value))?;
        ctx.out.write_all(b"\n")?;
    } else {
        ctx.out
            .write_all(json::to_pvr_json_pretty(&value).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(terminal_safe("plain é", false), "plain é");
        assert_eq!(
            terminal_safe("a\u{1b}]0;owned\u{7}b\u{9b}2Jc\rd\ne", false),
            "a\\u{1b}]0;owned\\u{7}b\\u{9b}2Jc\\u{d}d\\u{a}e"
        );
        assert_eq!(terminal_safe("l1\n\tl2\u{7f}", true), "l1\n\tl2\\u{7f}");
    }
}
