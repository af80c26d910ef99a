//! A progress bar on stderr while a large recording is read (`analyze`, `plot`): drawn only when
//! stderr is a terminal, so pipes, logs and tests see nothing.

use std::{fs::File, io::IsTerminal};

use indicatif::{ProgressBar, ProgressBarIter, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// Smaller files are read in well under a second: no bar.
const SHOWN_FROM_BYTES: u64 = 64 << 20;

/// `file`, counting what is read from it on a bar labelled `what` (hidden unless stderr is a
/// terminal and the file is large).
pub fn reading(file: File, what: &str) -> ProgressBarIter<File> {
    let len = file.metadata().map_or(0, |m| m.len());
    let bar = if len >= SHOWN_FROM_BYTES && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.with_message(what.to_owned())
            .with_finish(ProgressFinish::AndClear)
    } else {
        ProgressBar::hidden()
    };
    bar.wrap_read(file)
}
