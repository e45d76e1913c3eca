//! The progress bar (feature `progress`): indicatif on stderr, fed by [`Progress`] snapshots.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Progress;

/// Where a session's bars are drawn, for tests and for programs with their own terminal
/// handling ([`SessionBuilder::progress_draw_target`](crate::SessionBuilder::progress_draw_target)).
pub(crate) type DrawTargetFactory = std::sync::Arc<dyn Fn() -> ProgressDrawTarget + Send + Sync>;

pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar for a run, when one is asked for (`show`) and there is somewhere to draw it.
    pub(crate) fn new(
        run: &'static str,
        total: Option<u64>,
        show: bool,
        draw_target: Option<&DrawTargetFactory>,
    ) -> Option<Bar> {
        if !show {
            return None;
        }
        let target = match draw_target {
            Some(factory) => factory(),
            None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
                ProgressDrawTarget::stderr()
            }
            // Not a terminal and not asked for elsewhere: no bar (a log file gets no
            // escape codes).
            None => return None,
        };
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), target).with_style(
                ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{prefix} {pos} done {msg}").expect("valid template"),
            ),
        };
        bar.set_prefix(run);
        Some(Bar { bar })
    }

    pub(crate) fn update(&self, progress: &Progress) {
        self.bar.set_position(progress.done);
        self.bar.set_message(describe(progress));
        if progress.finished {
            self.bar.finish();
        }
    }
}

/// The fields after the bar: failures, retries, throttle, tokens, cost, rate and ETA.
pub(crate) fn describe(p: &Progress) -> String {
    let eta = p
        .eta
        .filter(|_| !p.finished)
        .map(|d| format!(" · ETA {}s", d.as_secs()))
        .unwrap_or_default();
    let why = p
        .retry_reason
        .as_ref()
        .filter(|_| !p.finished)
        .map(|reason| format!(" · retrying: {reason}"))
        .unwrap_or_default();
    format!(
        "· {} failed · {} retries · {} throttle waits · {} pauses · {} tokens · ${:.4} · {:.1}/s{eta}{why}",
        p.failed, p.retried, p.throttle_waits, p.backoff_pauses, p.tokens, p.cost_usd, p.items_per_second
    )
}
