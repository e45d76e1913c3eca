//! An item's life as a pure sequence over a [`World`]: stop check → prompt (panics caught) →
//! counted as started → attempts under the retry policy (and the one re-prompt of a strict
//! answer) → counted as finished → `Ok` or `Failed`. The library's world is the session
//! (`attempt.rs`); the unit tests below script one, with no clock and no process.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use super::strict;
use crate::{Error, Failed, Response};

/// What happened to an item, for the counters and the progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The item is counted as started.
    Started,
    /// The item ended, once, with this outcome.
    Finished { succeeded: bool },
    /// A try failed and another comes after a wait; the error is why.
    WillRetry,
    /// A retry got past the budget and the throttle (it is sent, or its process failed to
    /// start).
    Retried,
    /// The answer came from the journal, without a call.
    Replayed,
}

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Refused before any call (budget, stop): not a try.
    NotStarted(Error),
    /// The try failed: in the call (`called`), or before it in starting a process.
    Failed { error: Error, called: bool },
    /// The call was refused because a subscription usage window is used up, and every item
    /// now waits for its reset on the throttle: asked again, a call made but not a try.
    Paused(Error),
}

/// Everything an item's life needs from outside.
pub(crate) trait World {
    /// Why no (further) try may start: the run's stop, or the session closed.
    fn stop_reason(&self) -> Option<Error>;
    /// One try: budget reservation, throttle permit, process, turn, settle.
    fn attempt(&self, prompt: &str) -> Result<Response, AttemptError>;
    /// How long to wait before try `tries + 1` after `error`, or `None` for no retry.
    fn retry_after(&self, error: &Error, tries: u32) -> Option<Duration>;
    /// Wait `wait`; false when the run stopped first.
    fn wait(&self, wait: Duration) -> bool;
    /// No other item of the run can succeed.
    fn fail_fatally(&self, error: &Error);
    /// Count what happened.
    fn note(&self, event: Event, error: Option<&Error>);
    /// The journal's answer to `prompt` (as sent), if it has one; `Err` when the journal
    /// cannot key it (the session's answer-deciding settings are unknown): the item fails
    /// without a call.
    fn replay(&self, prompt: &str) -> Result<Option<Response>, Error>;
    /// Write the outcome of `prompt` to the journal, durably, before it is handed on.
    fn record(&self, prompt: &str, outcome: Result<&Response, &Error>);
}

/// What an answer must be.
pub(crate) enum Policy<'a> {
    /// The answer as it comes.
    Plain,
    /// Exactly one of `allowed`: the instruction is appended, and an answer outside the set
    /// gets one fresh re-prompt.
    Strict {
        allowed: &'a [String],
        interpret: &'a (dyn Fn(&str) -> Option<usize> + Sync),
    },
    /// A structured answer that must pass `check` (it fits the caller's type): one that does
    /// not, or that is missing, gets one more call with the same prompt (fresh context).
    #[cfg_attr(not(feature = "schema"), allow(dead_code))]
    Typed {
        check: &'a (dyn Fn(&Response) -> Result<(), Error> + Sync),
    },
}

/// An answered item.
#[derive(Debug)]
pub(crate) struct Answer {
    pub response: Response,
    /// Under [`Policy::Strict`], which allowed answer it was.
    pub choice: Option<usize>,
    /// Calls made for it.
    pub attempts: u32,
}

/// One item's life.
pub(crate) fn live<T, P, W>(
    world: &W,
    item: T,
    prompt: impl FnOnce(&T) -> P,
    policy: &Policy<'_>,
) -> Result<(T, Answer), Failed<T>>
where
    P: AsRef<str>,
    W: World + ?Sized,
{
    match world.stop_reason() {
        // A spent budget still lets an answer come from the journal, at no cost: the item
        // goes on, and is refused before any call if it has none there.
        Some(Error::BudgetExceeded { .. }) | None => {}
        Some(reason) => return Err(not_started(world, item, reason)),
    }
    // Built before a process is taken, so that a prompt closure that itself uses Claude
    // cannot starve the pool; a panic in it fails this item only.
    let prompt = match catch_unwind(AssertUnwindSafe(|| prompt(&item).as_ref().to_owned())) {
        Ok(prompt) => prompt,
        Err(panic) => {
            let error = Error::Panicked(panic_message(panic.as_ref()));
            return Err(not_started(world, item, error));
        }
    };
    world.note(Event::Started, None);
    let outcome = answer(world, &prompt, policy);
    finished(world, item, outcome)
}

/// An item's life ends with `outcome`: counted as finished once, handed back with it.
pub(crate) fn finished<T, W: World + ?Sized>(
    world: &W,
    item: T,
    outcome: Result<Answer, (Error, u32)>,
) -> Result<(T, Answer), Failed<T>> {
    world.note(
        Event::Finished {
            succeeded: outcome.is_ok(),
        },
        None,
    );
    match outcome {
        Ok(answer) => Ok((item, answer)),
        Err((error, attempts)) => Err(Failed {
            item,
            error,
            attempts,
        }),
    }
}

/// An item that will not be sent, counted once as started and failed so that stats and
/// progress agree.
pub(crate) fn not_started<T, W: World + ?Sized>(world: &W, item: T, error: Error) -> Failed<T> {
    world.note(Event::Started, None);
    world.note(Event::Finished { succeeded: false }, None);
    Failed {
        item,
        error,
        attempts: 0,
    }
}

/// The answer from the journal if it has one, else from calls; either way in the journal
/// before it is handed on. Under a strict policy the key is the first prompt (with its
/// instruction), and what is kept is the allowed answer, however many calls it took.
fn answer<W: World + ?Sized>(
    world: &W,
    prompt: &str,
    policy: &Policy<'_>,
) -> Result<Answer, (Error, u32)> {
    // The item's own text, before any instruction is added to it: the CLI would drop a blank
    // prompt, and a strict one would be a question about nothing.
    if is_blank(prompt) {
        return Err((Error::EmptyPrompt, 0));
    }
    let asked = first_ask(policy, prompt);
    if let Some(response) = world.replay(&asked).map_err(|error| (error, 0))? {
        let (choice, fits) = replay_fits(policy, &response);
        // A stored strict answer is always an allowed one; should the list have changed
        // under the same key (it cannot: the list is in the prompt), it is asked again. A
        // stored typed answer that no longer fits (the type changed, not its schema) too.
        if fits {
            world.note(Event::Replayed, None);
            return Ok(Answer {
                response,
                choice,
                attempts: 0,
            });
        }
    }
    let outcome = ask(world, prompt, &asked, policy);
    match &outcome {
        Ok(answer) => world.record(&asked, Ok(&answer.response)),
        // A stop is not the item's outcome: nothing to inspect later.
        Err((Error::Cancelled | Error::Stopped(_) | Error::Closed, _)) => {}
        Err((error, _)) => world.record(&asked, Err(error)),
    }
    outcome
}

fn ask<W: World + ?Sized>(
    world: &W,
    prompt: &str,
    asked: &str,
    policy: &Policy<'_>,
) -> Result<Answer, (Error, u32)> {
    let (first, calls) = split(attempts(world, asked));
    let again = match judge(policy, prompt, asked, first, Ask::First) {
        Judged::Answer { response, choice } => {
            return Ok(Answer {
                response,
                choice,
                attempts: calls,
            })
        }
        Judged::Fails(error) | Judged::TryFailed(error) => return Err((error, calls)),
        Judged::AskAgain(again) => again,
    };
    log::debug!("the answer does not fit the policy; asking once more");
    let (second, more) = split(self::attempts(world, &again));
    let calls = calls + more;
    match judge(policy, prompt, asked, second, Ask::Second) {
        Judged::Answer { response, choice } => Ok(Answer {
            response,
            choice,
            attempts: calls,
        }),
        Judged::Fails(error) | Judged::TryFailed(error) => Err((error, calls)),
        Judged::AskAgain(_) => unreachable!("a second ask is never asked again"),
    }
}

fn split(outcome: Result<(Response, u32), (Error, u32)>) -> (Result<Response, Error>, u32) {
    match outcome {
        Ok((response, calls)) => (Ok(response), calls),
        Err((error, calls)) => (Err(error), calls),
    }
}

/// Which of an item's (at most two) asks an outcome answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    First,
    /// The policy's one re-prompt.
    Second,
}

/// What a policy makes of one ask's outcome (after its retries).
#[derive(Debug)]
pub(crate) enum Judged {
    /// The item's answer.
    Answer {
        response: Response,
        choice: Option<usize>,
    },
    /// Ask once more, with fresh context, with this prompt (only after the first ask).
    AskAgain(String),
    /// The answer came but the policy rejects it for good.
    Fails(Error),
    /// The ask itself failed (its retries are over, or are the caller's to make).
    TryFailed(Error),
}

/// The policy's judgement of an ask's outcome: the one place it is made, for items answered
/// one call at a time and for items answered in batches (`batched.rs`). `prompt` is the
/// item's own, `asked` what its first ask sent.
pub(crate) fn judge(
    policy: &Policy<'_>,
    prompt: &str,
    asked: &str,
    outcome: Result<Response, Error>,
    ask: Ask,
) -> Judged {
    match policy {
        Policy::Plain => match outcome {
            Ok(response) => Judged::Answer {
                response,
                choice: None,
            },
            Err(error) => Judged::TryFailed(error),
        },
        Policy::Typed { check } => {
            // The backend's own "no structured answer" or "not the schema" counts as an
            // answer that does not fit: the model may well get it right when asked again.
            let unfit = |e: &Error| {
                matches!(
                    e,
                    Error::StructuredOutputMissing { .. } | Error::StructuredOutputInvalid(_)
                )
            };
            match (outcome, ask) {
                (Ok(response), _) => match check(&response) {
                    Ok(()) => Judged::Answer {
                        response,
                        choice: None,
                    },
                    Err(_) if ask == Ask::First => Judged::AskAgain(asked.to_owned()),
                    Err(error) => Judged::Fails(error),
                },
                (Err(error), Ask::First) if unfit(&error) => Judged::AskAgain(asked.to_owned()),
                (Err(error), _) => Judged::TryFailed(error),
            }
        }
        Policy::Strict { allowed, interpret } => match outcome {
            Ok(response) => match (interpret(&response.text), ask) {
                (Some(choice), _) => Judged::Answer {
                    response,
                    choice: Some(choice),
                },
                (None, Ask::First) => {
                    log::debug!(
                        "answer {:?} is not allowed; asking once more",
                        response.text
                    );
                    Judged::AskAgain(strict::reminder(prompt, &response.text, allowed))
                }
                (None, Ask::Second) => Judged::Fails(strict::invalid(&response.text, allowed)),
            },
            Err(error) => Judged::TryFailed(error),
        },
    }
}

/// The prompt an item's first ask sends: its own, with a strict policy's instruction.
pub(crate) fn first_ask<'p>(policy: &Policy<'_>, prompt: &'p str) -> Cow<'p, str> {
    match policy {
        Policy::Plain | Policy::Typed { .. } => Cow::Borrowed(prompt),
        Policy::Strict { allowed, .. } => Cow::Owned(strict::instruction(prompt, allowed)),
    }
}

/// Whether a journaled answer still fits the policy (and which allowed answer it is).
pub(crate) fn replay_fits(policy: &Policy<'_>, response: &Response) -> (Option<usize>, bool) {
    match policy {
        Policy::Plain => (None, true),
        Policy::Strict { interpret, .. } => {
            let choice = interpret(&response.text);
            (choice, choice.is_some())
        }
        Policy::Typed { check } => (None, check(response).is_ok()),
    }
}

/// One prompt with its retries. The count returned with either outcome is the number of
/// calls made (prompts sent to a process).
///
/// An item stopped between its tries (cancel, or a fatal error elsewhere in the run) keeps
/// the error of its last call: that is what went wrong with it, the stop only ended the
/// retries. A spent budget and a closed session are the exceptions: they are why the item
/// was not tried again, and they last.
pub(crate) fn attempts<W: World + ?Sized>(
    world: &W,
    prompt: &str,
) -> Result<(Response, u32), (Error, u32)> {
    // The CLI drops a blank prompt and the model would answer something else.
    if is_blank(prompt) {
        return Err((Error::EmptyPrompt, 0));
    }
    // Tries count towards `max_retries` even when no call could be made (a process that
    // failed to start), so that a persistent failure still ends.
    let mut tries = 0;
    let mut calls = 0;
    let mut last: Option<Error> = None;
    // The last call was refused for a usage window: the next is the same try again.
    let mut after_pause = false;
    loop {
        if let Some(reason) = world.stop_reason() {
            return Err((keep_last(last, reason), calls));
        }
        tries += 1;
        let outcome = world.attempt(prompt);
        // A retry is counted once it went further than the budget and the throttle: a stop
        // during its wait there sends nothing.
        let retry = last.is_some() && !std::mem::replace(&mut after_pause, false);
        if retry && !matches!(outcome, Err(AttemptError::NotStarted(_))) {
            world.note(Event::Retried, None);
        }
        let error = match outcome {
            Ok(response) => return Ok((response, calls + 1)),
            Err(AttemptError::Paused(error)) => {
                // A window used up is no fault of the item's: its tries stay as they were.
                calls += 1;
                tries -= 1;
                after_pause = true;
                last = Some(error);
                continue;
            }
            Err(AttemptError::NotStarted(error)) => {
                if error.is_fatal() {
                    world.fail_fatally(&error);
                }
                return Err((keep_last(last, error), calls));
            }
            Err(AttemptError::Failed { error, called }) => {
                calls += u32::from(called);
                error
            }
        };
        if error.is_fatal() {
            world.fail_fatally(&error);
            return Err((error, calls));
        }
        let Some(wait) = world.retry_after(&error, tries) else {
            return Err((error, calls));
        };
        log::debug!("retrying an item in {wait:?} (try {tries} failed: {error})");
        world.note(Event::WillRetry, Some(&error));
        let went_on = world.wait(wait);
        last = Some(error);
        if !went_on {
            return Err((last.expect("just set"), calls));
        }
    }
}

/// The error an item stopped between tries ends with: its last call's, unless the stop is
/// one that lasts (a spent budget, a closed session) or there was no call.
pub(crate) fn keep_last(last: Option<Error>, stop: Error) -> Error {
    match (last, &stop) {
        (Some(previous), Error::Cancelled | Error::Stopped(_)) => previous,
        _ => stop,
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".into()
    }
}

/// Whether the CLI would drop this prompt: empty, or only white space (a byte-order mark
/// counts, as the CLI trims it too).
pub(crate) fn is_blank(prompt: &str) -> bool {
    prompt.chars().all(|c| c.is_whitespace() || c == '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    /// A scripted world: each attempt takes the next scripted outcome; waits are recorded,
    /// not slept; the stop can be set before any step.
    #[derive(Default)]
    struct Script {
        outcomes: RefCell<VecDeque<Result<&'static str, AttemptError>>>,
        prompts: RefCell<Vec<String>>,
        waits: RefCell<Vec<Duration>>,
        events: RefCell<Vec<Event>>,
        fatal: RefCell<Option<Error>>,
        stop: RefCell<Option<Error>>,
        /// Set the stop when the nth wait starts (1-based).
        stop_at_wait: Cell<Option<usize>>,
        max_retries: u32,
        /// Answers by prompt as asked, and every prompt recorded.
        journal: RefCell<std::collections::HashMap<String, Response>>,
        recorded: RefCell<Vec<String>>,
    }

    impl Script {
        fn new(max_retries: u32) -> Script {
            Script {
                max_retries,
                ..Script::default()
            }
        }

        fn then(self, outcome: Result<&'static str, AttemptError>) -> Script {
            self.outcomes.borrow_mut().push_back(outcome);
            self
        }

        fn count(&self, event: Event) -> usize {
            self.events.borrow().iter().filter(|e| **e == event).count()
        }
    }

    impl World for Script {
        fn stop_reason(&self) -> Option<Error> {
            self.stop.borrow().clone()
        }
        fn attempt(&self, prompt: &str) -> Result<Response, AttemptError> {
            self.prompts.borrow_mut().push(prompt.to_owned());
            let next = self.outcomes.borrow_mut().pop_front();
            match next.expect("the script has an outcome for every attempt") {
                Ok(text) => Ok(Response {
                    text: text.into(),
                    ..Response::default()
                }),
                Err(error) => Err(error),
            }
        }
        fn retry_after(&self, error: &Error, tries: u32) -> Option<Duration> {
            (error.is_retryable() && tries <= self.max_retries)
                .then(|| Duration::from_secs(u64::from(tries)))
        }
        fn wait(&self, wait: Duration) -> bool {
            self.waits.borrow_mut().push(wait);
            if self.stop_at_wait.get() == Some(self.waits.borrow().len()) {
                *self.stop.borrow_mut() = Some(Error::Cancelled);
                return false;
            }
            true
        }
        fn fail_fatally(&self, error: &Error) {
            *self.fatal.borrow_mut() = Some(error.clone());
        }
        fn note(&self, event: Event, _: Option<&Error>) {
            self.events.borrow_mut().push(event);
        }
        fn replay(&self, prompt: &str) -> Result<Option<Response>, Error> {
            Ok(self.journal.borrow().get(prompt).cloned())
        }
        fn record(&self, prompt: &str, outcome: Result<&Response, &Error>) {
            if let Ok(response) = outcome {
                self.journal
                    .borrow_mut()
                    .insert(prompt.to_owned(), response.clone());
            }
            self.recorded.borrow_mut().push(prompt.to_owned());
        }
    }

    fn api(status: u16) -> AttemptError {
        AttemptError::Failed {
            error: Error::Api {
                status: Some(status),
                message: "scripted".into(),
            },
            called: true,
        }
    }

    fn run(
        world: &Script,
        policy: &Policy<'_>,
    ) -> Result<(&'static str, Answer), Failed<&'static str>> {
        live(world, "item", |_| "the prompt", policy)
    }

    fn usage_limit() -> AttemptError {
        AttemptError::Paused(Error::UsageLimitReached {
            window: crate::UsageWindow::FiveHour,
            resets_at: None,
            message: "You've hit your 5-hour limit".into(),
        })
    }

    #[test]
    fn a_usage_pause_is_asked_again_without_spending_a_try() {
        // One retry, still there for the 529 after two refused calls: they spent none.
        let world = Script::new(1)
            .then(Err(usage_limit()))
            .then(Err(usage_limit()))
            .then(Err(api(529)))
            .then(Ok("answered"));
        let (_, answer) = run(&world, &Policy::Plain).unwrap();
        assert_eq!(answer.response.text, "answered");
        // Every call made counts, the refused ones too.
        assert_eq!(answer.attempts, 4);
        // The wait is the throttle's, not a retry's: only the 529's backoff was waited here.
        assert_eq!(world.waits.borrow().len(), 1);
        // The 529's retry is one; the re-asks after the pauses are not retries.
        assert_eq!(world.count(Event::Retried), 1);
        assert!(world.fatal.borrow().is_none());
    }

    #[test]
    fn a_stop_during_a_usage_pause_keeps_the_limit_as_the_items_error() {
        let world = Script::new(0)
            .then(Err(usage_limit()))
            .then(Err(AttemptError::NotStarted(Error::Cancelled)));
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert!(
            matches!(failed.error, Error::UsageLimitReached { .. }),
            "{:?}",
            failed.error
        );
        assert_eq!((failed.item, failed.attempts), ("item", 1));
        assert_eq!(world.count(Event::Retried), 0);
    }

    #[test]
    fn retryable_failures_are_retried_with_the_policys_waits_until_an_answer() {
        let world = Script::new(3)
            .then(Err(api(429)))
            .then(Err(api(529)))
            .then(Ok("hi"));
        let (item, answer) = run(&world, &Policy::Plain).unwrap();
        assert_eq!(
            (item, answer.response.text.as_str(), answer.attempts),
            ("item", "hi", 3)
        );
        assert_eq!(
            *world.waits.borrow(),
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(world.count(Event::Retried), 2);
        assert_eq!(world.count(Event::Started), 1);
        assert_eq!(world.count(Event::Finished { succeeded: true }), 1);
    }

    #[test]
    fn retries_end_at_the_policys_limit_with_the_last_error() {
        let world = Script::new(1).then(Err(api(529))).then(Err(api(500)));
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert_eq!(failed.item, "item");
        assert_eq!(failed.attempts, 2);
        assert_eq!(failed.error.api_status(), Some(500));
        assert_eq!(world.count(Event::Finished { succeeded: false }), 1);
    }

    #[test]
    fn a_fatal_error_stops_the_run_and_is_not_retried() {
        let world = Script::new(5).then(Err(AttemptError::Failed {
            error: Error::Authentication {
                message: "invalid key".into(),
            },
            called: true,
        }));
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert!(matches!(failed.error, Error::Authentication { .. }));
        assert!(matches!(
            *world.fatal.borrow(),
            Some(Error::Authentication { .. })
        ));
        assert!(world.waits.borrow().is_empty());
    }

    #[test]
    fn a_stop_during_the_wait_keeps_the_calls_error_and_counts_no_retry() {
        let world = Script::new(5).then(Err(api(529)));
        world.stop_at_wait.set(Some(1));
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert_eq!(failed.error.api_status(), Some(529));
        assert_eq!(failed.attempts, 1);
        assert_eq!(world.count(Event::Retried), 0);
    }

    #[test]
    fn a_retry_stopped_before_it_is_sent_is_not_counted() {
        // The retry's wait ends, then it is refused on the throttle (a stop came meanwhile).
        let world = Script::new(5)
            .then(Err(api(429)))
            .then(Err(AttemptError::NotStarted(Error::Cancelled)));
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert_eq!(
            failed.error.api_status(),
            Some(429),
            "the call's error is kept"
        );
        assert_eq!(world.count(Event::Retried), 0);
    }

    #[test]
    fn a_budget_refusal_after_a_failed_call_reports_the_budget() {
        let spent = Error::BudgetExceeded {
            budget_usd: 1.0,
            spent_usd: 1.0,
        };
        let world = Script::new(5)
            .then(Err(api(529)))
            .then(Err(AttemptError::NotStarted(spent)));
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert!(matches!(failed.error, Error::BudgetExceeded { .. }));
        assert_eq!(failed.attempts, 1);
        assert!(
            world.fatal.borrow().is_some(),
            "a spent budget stops the run"
        );
    }

    #[test]
    fn a_stopped_run_hands_the_item_back_counted_without_a_call() {
        let world = Script::new(5);
        *world.stop.borrow_mut() = Some(Error::Cancelled);
        let failed = run(&world, &Policy::Plain).unwrap_err();
        assert!(matches!(failed.error, Error::Cancelled));
        assert_eq!(failed.attempts, 0);
        assert!(world.prompts.borrow().is_empty());
        assert_eq!(world.count(Event::Started), 1);
        assert_eq!(world.count(Event::Finished { succeeded: false }), 1);
    }

    #[test]
    fn a_panicking_prompt_fails_its_item_only() {
        let world = Script::new(5);
        let failed = live(
            &world,
            7,
            |n: &i32| -> String { panic!("no prompt for {n}") },
            &Policy::Plain,
        )
        .unwrap_err();
        assert_eq!(failed.item, 7);
        assert!(matches!(&failed.error, Error::Panicked(m) if m == "no prompt for 7"));
        assert_eq!(world.count(Event::Finished { succeeded: false }), 1);
    }

    #[test]
    fn a_journaled_answer_is_replayed_without_a_call_and_failures_are_asked_again() {
        let world = Script::new(0).then(Ok("first")).then(Err(api(400)));
        let (_, answer) = run(&world, &Policy::Plain).unwrap();
        assert_eq!(answer.attempts, 1);
        let failed = live(&world, "other", |_| "another prompt", &Policy::Plain).unwrap_err();
        assert_eq!(failed.error.api_status(), Some(400));
        assert_eq!(world.recorded.borrow().len(), 2, "both outcomes recorded");
        // Again: the answer is replayed, the failure is asked again.
        let world2 = Script {
            journal: RefCell::new(world.journal.borrow().clone()),
            ..Script::new(0)
        }
        .then(Ok("now it works"));
        let (_, answer) = run(&world2, &Policy::Plain).unwrap();
        assert_eq!(
            (answer.response.text.as_str(), answer.attempts),
            ("first", 0)
        );
        assert_eq!(world2.count(Event::Replayed), 1);
        assert!(
            world2.prompts.borrow().is_empty(),
            "no call for a replayed answer"
        );
        let (_, answer) = live(&world2, "other", |_| "another prompt", &Policy::Plain).unwrap();
        assert_eq!(answer.response.text, "now it works");
    }

    #[test]
    fn a_spent_budget_still_replays_what_the_journal_has() {
        let spent = Error::BudgetExceeded {
            budget_usd: 1.0,
            spent_usd: 1.0,
        };
        let world = Script::new(0);
        world
            .journal
            .borrow_mut()
            .insert("the prompt".into(), Response::default());
        *world.stop.borrow_mut() = Some(spent);
        let (_, answer) = run(&world, &Policy::Plain).unwrap();
        assert_eq!(answer.attempts, 0);
        // An item the journal does not have is refused, without a call.
        let failed = live(&world, "other", |_| "not journaled", &Policy::Plain).unwrap_err();
        assert!(matches!(failed.error, Error::BudgetExceeded { .. }));
        assert!(world.prompts.borrow().is_empty());
    }

    #[test]
    fn a_strict_answer_is_replayed_as_its_choice() {
        let allowed = vec!["yes".to_string(), "no".to_string()];
        let policy = Policy::Strict {
            allowed: &allowed,
            interpret: &yes_no,
        };
        let world = Script::new(0).then(Ok("Perhaps")).then(Ok("No."));
        run(&world, &policy).unwrap();
        // Kept under the first prompt (with its instruction): the allowed answer.
        let kept = world.journal.borrow();
        let (asked, response) = kept.iter().next().unwrap();
        assert!(asked.ends_with("Allowed answers: yes | no"));
        assert_eq!(response.text, "No.");
        let again = Script {
            journal: RefCell::new(kept.clone()),
            ..Script::new(0)
        };
        let (_, answer) = run(&again, &policy).unwrap();
        assert_eq!((answer.choice, answer.attempts), (Some(1), 0));
    }

    #[test]
    fn a_blank_prompt_is_refused_without_a_call() {
        let world = Script::new(5);
        let failed = live(&world, (), |_| " \n\u{feff}", &Policy::Plain).unwrap_err();
        assert!(matches!(failed.error, Error::EmptyPrompt));
        assert!(world.prompts.borrow().is_empty());
    }

    fn yes_no(answer: &str) -> Option<usize> {
        strict::match_answer(answer, &["yes".into(), "no".into()])
    }

    #[test]
    fn a_strict_answer_outside_the_set_gets_one_reprompt_quoting_it() {
        let allowed = vec!["yes".to_string(), "no".to_string()];
        let policy = Policy::Strict {
            allowed: &allowed,
            interpret: &yes_no,
        };
        let world = Script::new(0).then(Ok("Perhaps")).then(Ok("No."));
        let (_, answer) = run(&world, &policy).unwrap();
        assert_eq!((answer.choice, answer.attempts), (Some(1), 2));
        let prompts = world.prompts.borrow();
        assert!(prompts[0].ends_with("Allowed answers: yes | no"));
        assert!(prompts[1].contains("\"Perhaps\""));
        assert_eq!(
            world.count(Event::Started),
            1,
            "one item however many calls"
        );

        let world = Script::new(0).then(Ok("Perhaps")).then(Ok("Maybe"));
        let failed = run(&world, &policy).unwrap_err();
        assert!(matches!(&failed.error, Error::InvalidAnswer { answer, .. } if answer == "Maybe"));
        assert_eq!(failed.attempts, 2);
    }

    #[test]
    fn blank_prompts() {
        for blank in ["", " ", "\n\t ", "\u{feff}", "\u{3000}\u{a0}"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for text in ["a", " x ", "\u{200b}"] {
            assert!(!is_blank(text), "{text:?}");
        }
    }

    /// A typed answer that does not fit is asked once more with the same prompt; only one
    /// that fits goes to the journal, and a stored one that no longer fits is asked again.
    #[test]
    fn an_answer_that_does_not_fit_its_type_is_asked_once_more_then_fails() {
        let fits = |r: &Response| {
            if r.text.starts_with("fits") {
                Ok(())
            } else {
                Err(Error::StructuredOutputInvalid(format!(
                    "{:?} does not fit",
                    r.text
                )))
            }
        };
        let policy = Policy::Typed { check: &fits };
        let world = Script::new(0).then(Ok("prose")).then(Ok("fits: 4"));
        let (_, answer) = run(&world, &policy).unwrap();
        assert_eq!(
            (answer.response.text.as_str(), answer.attempts),
            ("fits: 4", 2)
        );
        assert_eq!(*world.prompts.borrow(), ["the prompt", "the prompt"]);
        assert_eq!(world.journal.borrow()["the prompt"].text, "fits: 4");

        // Twice unfit: the item fails with the check's error, after two calls, unrecorded
        // as an answer. A backend's own "no structured output" counts as unfit too.
        let world = Script::new(3)
            .then(Err(AttemptError::Failed {
                error: Error::StructuredOutputMissing {
                    text: "prose".into(),
                },
                called: true,
            }))
            .then(Ok("still prose"));
        let failed = run(&world, &policy).unwrap_err();
        assert!(
            matches!(failed.error, Error::StructuredOutputInvalid(_)),
            "{failed:?}"
        );
        assert_eq!((failed.item, failed.attempts), ("item", 2));
        assert!(world.journal.borrow().is_empty());
        assert!(
            world.waits.borrow().is_empty(),
            "asked again at once, not retried"
        );

        // A stored answer that does not fit is not taken.
        let world = Script::new(0).then(Ok("fits: 5"));
        world.journal.borrow_mut().insert(
            "the prompt".into(),
            Response {
                text: "stale".into(),
                ..Response::default()
            },
        );
        let (_, answer) = run(&world, &policy).unwrap();
        assert_eq!(
            (answer.response.text.as_str(), answer.attempts),
            ("fits: 5", 1)
        );
        assert_eq!(world.count(Event::Replayed), 0);
    }
}
