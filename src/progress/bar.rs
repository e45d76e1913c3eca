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
        // The whole line is ours ({msg}): the same text is printed as the last line when the
        // run ends.
        let bar = ProgressBar::with_draw_target(total, target)
            .with_style(ProgressStyle::with_template("{msg}").expect("valid template"));
        bar.set_message(line(&Progress {
            run,
            total,
            ..Progress::default()
        }));
        Some(Bar { bar })
    }

    pub(crate) fn update(&self, progress: &Progress) {
        if self.bar.is_finished() {
            return;
        }
        let line = line(progress);
        if progress.finished {
            self.end(line);
        } else {
            self.bar.set_position(progress.done);
            self.bar.set_message(line);
        }
    }

    /// Leave `last` on screen as a line of its own, ended, and clear the bar: the program's
    /// next output starts on a line of its own. indicatif's own `finish` leaves the cursor at
    /// the end of the bar's line, padded to the width the terminal reports, so where that is
    /// not the real width (a terminal whose size cannot be read, taken for 80 columns) the
    /// next output lands on the bar's line.
    fn end(&self, last: String) {
        self.bar.println(last);
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    /// A run that ends without its last report (a stream dropped early) ends its line too.
    fn drop(&mut self) {
        if !self.bar.is_finished() && !std::thread::panicking() {
            self.end(self.bar.message());
        }
    }
}

/// Width of the bar itself, in characters.
const BAR_WIDTH: usize = 24;

/// The bar's line: the run, a bar and `done/total` when the total is known (`done done`
/// when not), then the fields.
pub(crate) fn line(p: &Progress) -> String {
    match p.total {
        Some(total) => {
            let fraction = p.fraction().unwrap_or(0.0).clamp(0.0, 1.0);
            let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
            let head = usize::from(filled < BAR_WIDTH && p.done > 0);
            format!(
                "{} [{}{}{}] {}/{total} {}",
                p.run,
                "=".repeat(filled),
                ">".repeat(head),
                " ".repeat(BAR_WIDTH - filled - head),
                p.done,
                describe(p)
            )
        }
        None => format!("{} {} done {}", p.run, p.done, describe(p)),
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
    let batches = p
        .batches
        .map(|b| {
            format!(
                " · {} batches ({} running): {} processing, {} succeeded, {} errored, {} expired, {}s",
                b.submitted,
                b.running,
                b.processing,
                b.succeeded,
                b.errored,
                b.expired,
                p.elapsed.as_secs()
            )
        })
        .unwrap_or_default();
    format!(
        "· {} failed · {} retries · {} throttle waits · {} pauses · {} tokens · ${:.4} · {:.1}/s{batches}{eta}{why}",
        p.failed, p.retried, p.throttle_waits, p.backoff_pauses, p.tokens, p.cost_usd, p.items_per_second
    )
}
