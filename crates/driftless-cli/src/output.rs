//! Human and machine output: tables that respect NO_COLOR, JSON for `--json`.

use comfy_table::{ContentArrangement, Table, presets};
use driftless_core::Env;
use std::io::IsTerminal;

/// Colors only on a terminal and only when `NO_COLOR` is unset.
pub fn color_enabled(env: &Env) -> bool {
    env.non_empty("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// A plain table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !std::io::stdout().is_terminal() {
        t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED);
        t.force_no_tty();
    }
    t.set_header(header.to_vec());
    t
}

/// Prints `value` as pretty JSON, redacted as a last line of defence.
pub fn print_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    println!("{}", driftless_core::redact::redact(&text));
}
