//! Progress bar on a terminal (bytes, rate, ETA); nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgcairn::Progress;

pub(crate) struct Bar(ProgressBar);

impl Bar {
    pub(crate) fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Bar(bar)
    }
}

impl Progress for Bar {
    // Invariant: both templates are constants in indicatif's template syntax.
    #[allow(clippy::expect_used)]
    fn begin(&self, what: &str, total: Option<u64>) {
        let style = match total {
            Some(t) => {
                self.0.set_length(t);
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
            None => "{msg} {bytes} {bytes_per_sec} {elapsed}",
        };
        self.0.set_style(ProgressStyle::with_template(style).expect("valid template").progress_chars("=> "));
        self.0.set_message(what.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
