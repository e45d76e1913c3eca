//! One engine for an item's life, under every adaptor, the pipeline, [`Session::query`] and
//! [`Conversation`](crate::Conversation), beside the session:
//!
//! stop check → prompt (panics caught) → counted as started → [admission (budget
//! reservation → cache gate → throttle permit) → connection → turn → settle] × tries under
//! the retry policy → counted as finished → progress → `Ok` or `Failed`.
//!
//! - `life`: that sequence, over a `World` (so it is unit-tested without a clock or a
//!   backend), with a `Policy` for what differs (a strict answer's one re-prompt).
//! - `attempt`: the session as that world; the admission ticket and the connection are
//!   guards.
//! - `schedule`: the one place items are put on the session's threads.
//! - `stop`: the one stop state of a run.
//! - `strict`: what makes an answer one of a fixed set.
//! - `progress`: the run's progress reports.
//! - `typed`: answers parsed into the caller's type (feature `schema`).

mod attempt;
mod batched;
mod life;
mod progress;
mod schedule;
pub(crate) mod stop;
pub(crate) mod strict;
#[cfg(feature = "schema")]
pub(crate) mod typed;

use std::cell::RefCell;

pub(crate) use life::{panic_message, Answer, Policy};

use crate::backend::Conn;
use crate::{Cancel, Error, Failed, Journal, Response, Session};
use attempt::{ConnSource, SessionWorld};
use progress::RunProgress;
use stop::Stop;

/// One run of items on a session: its stop and its progress, shared by its items.
pub(crate) struct Run {
    session: Session,
    stop: Stop,
    progress: Option<RunProgress>,
    /// The run's journal (its own, else the session's).
    journal: Option<Journal>,
}

impl Run {
    /// A run named `name` (in progress reports) of `total` items when known, stopped by
    /// `cancel` when given.
    pub(crate) fn new(
        session: &Session,
        name: &'static str,
        total: Option<u64>,
        cancel: Option<&Cancel>,
    ) -> Run {
        Run::with_bar(session, name, total, cancel, None)
    }

    /// As [`new`](Self::new), with the session's progress-bar setting overridden.
    pub(crate) fn with_bar(
        session: &Session,
        name: &'static str,
        total: Option<u64>,
        cancel: Option<&Cancel>,
        show_bar: Option<bool>,
    ) -> Run {
        let progress = RunProgress::start(session, name, total, show_bar);
        Run::build(session, cancel, progress)
    }

    /// A run that reports no progress: one query.
    pub(crate) fn untracked(session: &Session) -> Run {
        Run::build(session, None, None)
    }

    /// A conversation's run: no progress, and `cancel`, when given, also ends the turn in
    /// flight (the conversation holds its process; a cancel must not wait for the answer).
    pub(crate) fn conversation(session: &Session, cancel: Option<&Cancel>) -> Run {
        let run = Run::build(session, cancel, None);
        run.stop.end_calls_on_cancel();
        run
    }

    fn build(session: &Session, cancel: Option<&Cancel>, progress: Option<RunProgress>) -> Run {
        // The run's own cancel and the session's (`SessionBuilder::with_cancel`).
        let cancels = cancel
            .into_iter()
            .chain(session.cancel())
            .cloned()
            .collect();
        let stop = Stop::cancelled_by(cancels);
        stop.watch(session.closing());
        // Waits on the throttle, at the cache gate and for a connection end at once on a
        // stop.
        let waiting = session.clone();
        stop.on_change(Box::new(move || {
            waiting.admission().wake();
            waiting.backend().wake();
        }));
        Run {
            session: session.clone(),
            stop,
            progress,
            journal: session.config().journal.clone(),
        }
    }

    /// Keep this run's answers in `journal` instead of the session's.
    pub(crate) fn with_journal(mut self, journal: Option<&Journal>) -> Run {
        if let Some(journal) = journal {
            self.journal = Some(journal.clone());
        }
        self
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn stop(&self) -> &Stop {
        &self.stop
    }

    /// Why an item of this run would not start now.
    pub(crate) fn stop_reason(&self) -> Option<Error> {
        life::World::stop_reason(&self.world(ConnSource::Backend))
    }

    fn world<'a>(&'a self, conns: ConnSource<'a>) -> SessionWorld<'a> {
        SessionWorld {
            session: &self.session,
            stop: &self.stop,
            progress: self.progress.as_ref(),
            conns,
            retries: true,
            journal: self
                .journal
                .as_ref()
                .map(|j| (j, self.session.answer_settings())),
        }
    }

    /// One item's whole life; see the [module](self).
    /// A batch session answers known sets of items only (`answer_items`): an item that
    /// comes here (a stream's, a pipeline's) is refused.
    pub(crate) fn item<T, P>(
        &self,
        item: T,
        prompt: impl FnOnce(&T) -> P,
        policy: &Policy<'_>,
    ) -> Result<(T, Answer), Failed<T>>
    where
        P: AsRef<str>,
    {
        if self.is_batched() {
            let why = crate::session::refused_by_batches("a stream");
            return Err(self.refuse(item, Error::InvalidConfig(why)));
        }
        life::live(&self.world(ConnSource::Backend), item, prompt, policy)
    }

    /// An item that will not be sent (stopped, refused), counted as started and failed.
    pub(crate) fn refuse<T>(&self, item: T, error: Error) -> Failed<T> {
        life::not_started(&self.world(ConnSource::Backend), item, error)
    }

    /// The run is over: the last progress report.
    pub(crate) fn finish(&self) {
        if let Some(progress) = &self.progress {
            progress.finish();
        }
    }
}

/// One turn of a conversation on its own connection: the same life as an item, without
/// retries, and keeping the connection in `held`.
pub(crate) fn turn(
    run: &Run,
    held: &RefCell<Option<Box<dyn Conn>>>,
    prompt: &str,
) -> Result<Response, Error> {
    if run.is_batched() {
        let why = crate::session::refused_by_batches("a conversation");
        return Err(Error::InvalidConfig(why));
    }
    // No journal: a turn's answer depends on the turns before it.
    let world = SessionWorld {
        retries: false,
        journal: None,
        ..run.world(ConnSource::Held(held))
    };
    life::live(&world, (), |_| prompt, &Policy::Plain)
        .map(|((), answer)| answer.response)
        .map_err(|failed| failed.error)
}

impl Session {
    /// Run one prompt with fresh context and wait for its answer. Several threads may call
    /// this at once: each gets its own process, up to `concurrency`, then waits for one.
    /// Retries, throttling and the budget apply as configured.
    ///
    /// # Errors
    ///
    /// Whatever the last attempt failed with; see [`Error`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().build()?;
    /// let answer = session.query("Say hi")?;
    /// assert!(!answer.text.is_empty());
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn query(&self, prompt: impl AsRef<str>) -> Result<Response, Error> {
        let run = Run::untracked(self);
        run.answer_one(prompt.as_ref(), &Policy::Plain)
            .map(|answer| answer.response)
            .map_err(|failed| failed.error)
    }
}
