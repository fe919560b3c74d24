//! Progress bar on a terminal (bytes, rate, ETA); nothing otherwise.
//!
//! Regression (issue 14): the first frame was drawn with indicatif's default
//! template (set_length redrew before set_style), and the ETA, measured from the
//! bar's creation (before the checkpoint), said "7d" for a 2-second backup. The bar
//! is now hidden until `begin` has set its style, its clock restarts there, and the
//! ETA shows once 1 s and 1% of the work have passed.

use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use pgcairn::Progress;

pub(crate) struct Bar(ProgressBar);

impl Bar {
    pub(crate) fn new() -> Self {
        Bar(ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()))
    }
}

/// "eta 12s" once the rate means something, "eta --" before.
///
/// Regression (issue 21, item 14): after 3 s and 2% the ETA showed only in the last
/// 40% of a 7-second backup ("always eta --" in the operator's short runs). One
/// second of transfer and 1% give indicatif's estimator enough to go on.
fn late_eta(s: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = if s.elapsed() >= Duration::from_secs(1) && s.fraction() >= 0.01 {
        write!(w, "eta {:#}", HumanDuration(s.eta()))
    } else {
        w.write_str("eta --")
    };
}

impl Progress for Bar {
    // Invariant: both templates are constants in indicatif's template syntax.
    #[allow(clippy::expect_used)]
    fn begin(&self, what: &str, total: Option<u64>) {
        let template = match total {
            Some(_) => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {late_eta}",
            None => "{msg} {bytes} {bytes_per_sec} {elapsed}",
        };
        let style = ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ");
        self.0.set_style(style.with_key("late_eta", late_eta));
        self.0.set_message(what.to_string());
        match total {
            Some(t) => self.0.set_length(t),
            None => self.0.unset_length(),
        }
        // Position, elapsed time and the rate estimate start now, not at creation.
        self.0.reset();
        self.0.set_draw_target(ProgressDrawTarget::stderr());
        // Drawn now, and (without a total: waiting for a checkpoint, verifying) ticking,
        // so the line and its elapsed time show before any byte arrives. Regression
        // (issue 21, item 14): a spread checkpoint left the terminal blank for minutes.
        self.0.tick();
        match total {
            Some(_) => self.0.disable_steady_tick(),
            None => self.0.enable_steady_tick(Duration::from_millis(500)),
        }
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.disable_steady_tick();
        self.0.finish_and_clear();
        self.0.set_draw_target(ProgressDrawTarget::hidden());
    }
}
