//! Human and machine output: tables that respect NO_COLOR, JSON for `--json`.

/// `println!` that ends the command quietly when stdout is a closed pipe ([`print_line`]).
macro_rules! say {
    () => {
        $crate::output::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::print_line(format_args!($($arg)*))
    };
}

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
    say!("{}", driftless_core::redact::redact(&text));
}

/// Prints one line to stdout. A closed stdout (`driftless … | head`) means the reader has what it
/// wanted: the command ends quietly with exit 0, where `println!` would panic. Every write the
/// command meant to make to a file has happened before its output is printed.
pub fn print_line(args: std::fmt::Arguments<'_>) {
    print_text(&format!("{args}\n"));
}

/// Prints `text` as is, with [`print_line`]'s handling of a closed stdout.
pub fn print_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(crate::exit::OK));
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(i32::from(crate::exit::FAILURE));
    }
}

/// A unix-ms instant for a person: RFC 3339 in UTC and how far away it is
/// (`2026-12-01T17:05:00Z (in 4m 59s)`).
pub fn when(unix_ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} (unix ms)"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let relative = if unix_ms >= now {
        format!("in {}", span((unix_ms - now) / 1000))
    } else {
        format!("{} ago", span((now - unix_ms) / 1000))
    };
    format!("{at} ({relative})")
}

/// `1h 2m 3s`, `4m 5s`, `6s`.
pub fn span(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}
