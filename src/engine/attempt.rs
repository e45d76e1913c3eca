//! The session as an item's [`World`]: one attempt is an admission ticket (budget
//! reservation, cache gate, throttle permit) and a connection, each a guard that gives
//! itself back on drop (an error or a panic on the way included), then the turn, then the
//! settlement of the ticket with what it really cost.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::life::{AttemptError, Event, World};
use super::progress::RunProgress;
use super::stop::Stop;
use crate::admission::{Refused, Settled};
use crate::backend::{Checkout, Conn, TurnFailure, TurnRequest};
use crate::journal::format::Key;
use crate::session::AnswerSettings;
use crate::stats;
use crate::{Error, Journal, Response, Session};

/// Where an attempt's connection comes from.
pub(crate) enum ConnSource<'a> {
    /// The session's backend: a fresh context per attempt.
    Backend,
    /// A conversation's own connection (taken from the backend on the first turn and kept).
    Held(&'a RefCell<Option<Box<dyn Conn>>>),
}

/// One run's items on one session.
pub(crate) struct SessionWorld<'a> {
    pub session: &'a Session,
    pub stop: &'a Stop,
    pub progress: Option<&'a RunProgress>,
    pub conns: ConnSource<'a>,
    /// Whether failed tries are tried again (a conversation's are not: a new process would
    /// not have its context).
    pub retries: bool,
    /// Where answers are kept and replayed from, with what besides the prompt decides them
    /// (`Err`: unknown, and the journal refuses the item).
    pub journal: Option<(&'a Journal, &'a AnswerSettings)>,
}

/// A connection taken for one attempt; goes back where it came from on drop.
enum Taken<'a> {
    Pooled(Box<dyn Conn>),
    Held {
        slot: &'a RefCell<Option<Box<dyn Conn>>>,
        conn: Option<Box<dyn Conn>>,
    },
}

impl Taken<'_> {
    fn conn(&mut self) -> &mut dyn Conn {
        match self {
            Taken::Pooled(conn) => conn.as_mut(),
            Taken::Held { conn, .. } => conn.as_deref_mut().expect("held until dropped"),
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Taken::Held { slot, conn } = self {
            *slot.borrow_mut() = conn.take();
        }
    }
}

impl SessionWorld<'_> {
    /// A connection for this attempt; `Ok(None)` when a stop ended the wait for one.
    fn take_conn(&self) -> Result<Option<Taken<'_>>, Error> {
        let checkout = || -> Result<Option<Box<dyn Conn>>, Error> {
            let waiting = &self.session.counters().connection_waiting;
            waiting.add(1);
            let checkout = self.session.backend().checkout(&|| self.should_stop());
            waiting.sub(1);
            match checkout? {
                Checkout::Ready(conn) => Ok(Some(conn)),
                Checkout::Stopped => Ok(None),
            }
        };
        match self.conns {
            ConnSource::Backend => Ok(checkout()?.map(Taken::Pooled)),
            ConnSource::Held(slot) => {
                let held = slot.borrow_mut().take();
                let conn = match held {
                    Some(conn) => conn,
                    None => match checkout()? {
                        Some(mut conn) => {
                            conn.hold();
                            conn
                        }
                        None => return Ok(None),
                    },
                };
                Ok(Some(Taken::Held {
                    slot,
                    conn: Some(conn),
                }))
            }
        }
    }

    /// Why an item that already holds its budget reservation must not be sent: a cancel, a
    /// fatal error or a close, but not a spent budget (the reservation was made before it
    /// ran out).
    fn stop_holding_reservation(&self) -> Option<Error> {
        self.stop_reason()
            .filter(|reason| !matches!(reason, Error::BudgetExceeded { .. }))
    }

    /// Whether a wait of an item that holds its reservation must end: as
    /// [`stop_holding_reservation`](Self::stop_holding_reservation), so a budget spent by
    /// other items does not stop one it already has room for.
    fn should_stop(&self) -> bool {
        (self.stop.is_set() || self.session.is_closed())
            && self.stop_holding_reservation().is_some()
    }
}

impl World for SessionWorld<'_> {
    fn stop_reason(&self) -> Option<Error> {
        if self.session.is_closed() {
            return Some(Error::Closed);
        }
        self.stop.reason()
    }

    fn attempt(&self, prompt: &str) -> Result<Response, AttemptError> {
        let session = self.session;
        let not_started = || {
            AttemptError::NotStarted(self.stop_holding_reservation().unwrap_or(Error::Cancelled))
        };
        // A conversation's turn skips the cache gate: it holds its connection, and waiting
        // there for an item that waits for a connection would wait forever.
        let gated = matches!(self.conns, ConnSource::Backend);
        let mut ticket = match session
            .admission()
            .admit(prompt, gated, &|| self.should_stop())
        {
            Ok(ticket) => ticket,
            Err(Refused::Budget(error)) => return Err(AttemptError::NotStarted(error)),
            Err(Refused::Stopped) => return Err(not_started()),
        };
        let mut taken = match self.take_conn() {
            Ok(Some(taken)) => taken,
            Ok(None) => {
                ticket.give_back();
                return Err(not_started());
            }
            Err(error) => {
                ticket.give_back();
                return Err(AttemptError::Failed {
                    error,
                    called: false,
                });
            }
        };
        // Waiting for a connection can take long; a stop that came meanwhile still holds.
        if let Some(reason) = self.stop_holding_reservation() {
            drop(taken);
            ticket.give_back();
            return Err(AttemptError::NotStarted(reason));
        }
        ticket.send();
        // A hard stop of the run (a pipeline's bounded stop) ends this call.
        let call = self.stop.register_call(taken.conn().abort_handle());
        let request = TurnRequest {
            prompt,
            timeout: session.config().timeout,
            structured: session.config().spec.json_schema.is_some(),
        };
        let outcome = taken
            .conn()
            .turn(&request, &mut |event| ticket.on_event(event));
        drop(call);
        drop(taken);
        match outcome {
            Ok(response) => {
                ticket.answered(&response);
                Ok(response)
            }
            Err(failure) => {
                // A call ended by a stop fails as stopped, and one ended by the session's
                // close as closed, not as a crash ("killed by signal 9 from outside").
                let stopped_as = |error| TurnFailure {
                    error,
                    unreachable: false,
                    ..failure
                };
                let failure = if self.stop.ended_calls() {
                    stopped_as(Error::Cancelled)
                } else if session.is_closed() {
                    stopped_as(Error::Closed)
                } else {
                    failure
                };
                // A conversation's process dies with a usage-limit refusal (the CLI
                // exits), and its context with it: its turn fails rather than wait.
                Err(match ticket.failed(failure, self.retries) {
                    Settled::Unsent(error) => AttemptError::Failed {
                        error,
                        called: false,
                    },
                    Settled::Sent(error) => AttemptError::Failed {
                        error,
                        called: true,
                    },
                    Settled::Paused(error) => AttemptError::Paused(error),
                })
            }
        }
    }

    fn retry_after(&self, error: &Error, tries: u32) -> Option<Duration> {
        let policy = &self.session.config().retry;
        (self.retries && policy.should_retry(error, tries)).then(|| policy.backoff(tries))
    }

    fn wait(&self, wait: Duration) -> bool {
        let deadline = crate::clock::saturating_add(Instant::now(), wait);
        self.stop.wait_until(deadline, &|| self.session.is_closed())
    }

    fn fail_fatally(&self, error: &Error) {
        self.stop.fail_fatally(error);
    }

    fn note(&self, event: Event, error: Option<&Error>) {
        let counters = self.session.counters();
        match event {
            Event::Started => stats::add(&counters.started, 1),
            Event::Finished { succeeded } => {
                let counter = if succeeded {
                    &counters.succeeded
                } else {
                    &counters.failed
                };
                stats::add(counter, 1);
                if let Some(progress) = self.progress {
                    progress.item_done(succeeded);
                }
            }
            Event::WillRetry => {
                if let Some(error) = error {
                    self.session.admission().note_retry_reason(error);
                }
            }
            Event::Retried => stats::add(&counters.retried, 1),
            Event::Replayed => {
                stats::add(&counters.replayed, 1);
                if let Some(progress) = self.progress {
                    progress.item_replayed();
                }
            }
        }
    }

    fn replay(&self, prompt: &str) -> Result<Option<Response>, Error> {
        let Some((journal, settings)) = self.journal else {
            return Ok(None);
        };
        match settings {
            Ok(settings) => Ok(journal.replay(Key::of(settings, prompt))),
            Err(why) => Err(Error::Journal {
                path: journal.path().to_path_buf(),
                message: why.clone(),
            }),
        }
    }

    fn record(&self, prompt: &str, outcome: Result<&Response, &Error>) {
        if let Some((journal, Ok(settings))) = self.journal {
            journal.record(Key::of(settings, prompt), outcome);
        }
    }
}
