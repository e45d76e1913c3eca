//! A multi-turn exchange on one process, with its context kept between turns.

use std::fmt;

use super::process::CliProcess;
use crate::throttle::estimate_tokens;
use crate::{Error, Response, Session};

/// One CLI process held for a multi-turn exchange ([`Session::conversation`]).
///
/// Unlike [`Session::query`], turns share context: the second turn sees the first. Costs:
/// the process is held (it counts against `concurrency`) until the conversation is dropped,
/// and every turn re-sends the exchange so far, so turns grow. Turns are not retried, because
/// a replacement process would not have the context. If the process dies mid-turn after
/// earlier turns, the context is gone: that turn fails as it failed, and every later turn
/// fails with [`Error::ConversationLost`] (start a new conversation).
///
/// # Examples
///
/// ```no_run
/// let session = claude_rayon::Session::builder().build()?;
/// let mut chat = session.conversation();
/// chat.send("Remember the number 42.")?;
/// let answer = chat.send("Which number did I ask you to remember?")?;
/// println!("{}", answer.text);
/// # Ok::<(), claude_rayon::Error>(())
/// ```
pub struct Conversation {
    session: Session,
    process: Option<CliProcess>,
    turns: u32,
    /// Turns whose context died with the process; later turns are refused.
    lost: Option<u32>,
}

impl Conversation {
    pub(crate) fn new(session: Session) -> Self {
        Conversation {
            session,
            process: None,
            turns: 0,
            lost: None,
        }
    }

    /// Send the next turn and wait for its answer.
    ///
    /// # Errors
    ///
    /// As [`Session::query`], without retries.
    pub fn send(&mut self, prompt: impl AsRef<str>) -> Result<Response, Error> {
        let prompt = prompt.as_ref();
        let inner = &self.session.inner;
        if inner.is_closed() {
            // Let the process go now rather than when the conversation is dropped.
            if let Some(process) = self.process.take() {
                inner.pool().give_back(process);
            }
            return Err(Error::Closed);
        }
        if let Some(turns) = self.lost {
            return Err(Error::ConversationLost { turns });
        }
        if super::seal::is_blank(prompt) {
            return Err(Error::EmptyPrompt);
        }
        let prompt_tokens = estimate_tokens(prompt);
        let reservation = inner
            .budget()
            .reserve(inner.item_estimate_usd(prompt_tokens))?;
        let estimate = prompt_tokens
            .saturating_add(super::REQUEST_OVERHEAD_TOKENS)
            .saturating_add(inner.config.output_token_allowance);
        // A close() from another handle ends the wait.
        let permit = match inner.throttle.acquire(estimate, &|| inner.is_closed()) {
            Ok(permit) => permit,
            Err(_) => {
                inner.budget().settle(reservation, 0.0);
                return Err(Error::Closed);
            }
        };
        let mut process = match self.process.take() {
            Some(process) => process,
            None => match inner.pool().checkout() {
                Ok(lease) => {
                    self.turns = 0;
                    lease.detach()
                }
                Err(error) => {
                    // Nothing was sent: give back what was taken.
                    inner.throttle.settle_calls(permit, 0, 0);
                    inner.budget().settle(reservation, 0.0);
                    return Err(error);
                }
            },
        };
        if self.turns > 0 {
            process.keep_context();
        }
        inner.count_started();
        inner.count_request();
        let (outcome, calls) = inner.run_turn(&mut process, prompt);
        inner.count_finished(outcome.is_ok());
        let failed_cost = process.take_failed_turn_cost();
        match &outcome {
            Ok(response) => {
                inner
                    .throttle
                    .settle_calls(permit, response.usage.total(), calls);
                inner.budget().settle(reservation, response.cost_usd);
                inner.record_success(response);
                self.turns += 1;
            }
            Err(_) => {
                let (cost, usage) = failed_cost.unwrap_or_default();
                inner.throttle.settle_calls(permit, usage.total(), calls);
                inner.budget().settle(reservation, cost);
                inner.record_cost(cost, &usage);
            }
        }
        if process.is_reusable() {
            self.process = Some(process);
        } else {
            inner.pool().give_back(process);
            if self.turns > 0 {
                self.lost = Some(self.turns);
            }
        }
        outcome
    }

    /// Turns answered so far in this conversation's context.
    pub fn turns(&self) -> u32 {
        self.turns
    }

    /// Whether the context was lost with a process that died; every later turn then fails
    /// with [`Error::ConversationLost`].
    pub fn is_lost(&self) -> bool {
        self.lost.is_some()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // The next user of this process must not see this conversation.
            process.mark_dirty();
            self.session.inner.pool().give_back(process);
        }
    }
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("turns", &self.turns)
            .field("pid", &self.process.as_ref().map(CliProcess::pid))
            .finish()
    }
}
