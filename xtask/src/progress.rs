//! Progress bars for long xtask steps: drawn on stderr when it is a terminal, nothing otherwise
//! (CI logs and pipes stay clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `total` bytes labelled `what`; hidden unless stderr is a terminal.
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("a valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}
