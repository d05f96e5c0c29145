//! How commands print states and diffs: pvr's renderings, shared by the work-tree commands
//! (`cmd::repo`) and their mount counterparts (`cmd::mountops`).

use super::Ctx;
use crate::cli::DiffFormat;
use crate::json;
use crate::patch;
use crate::state::State;
use anyhow::Result;

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
