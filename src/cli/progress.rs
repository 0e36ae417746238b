//! The progress bar of `projections rebuild`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, hidden with `--json` or when stderr is not a terminal.
pub(super) fn progress_bar(json: bool, name: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = progress_style() {
        bar.set_style(style);
    }
    bar.set_message("0 events applied");
    bar.set_prefix(format!("rebuilding {name}"));
    bar
}

/// Log positions done out of the head, the events applied, the rate and the time left.
fn progress_style() -> Result<ProgressStyle, indicatif::style::TemplateError> {
    Ok(ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] [{wide_bar}] {pos}/{len} log positions, {msg} \
         ({rate}, ETA {eta})",
    )?
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} positions/s", state.per_sec());
        },
    )
    .progress_chars("=> "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_template_is_valid() {
        assert!(progress_style().is_ok());
    }
}
