//! A multi-turn exchange on one process, with its context kept between turns.

use std::cell::RefCell;
use std::fmt;

use crate::backend::Conn;
use crate::engine::{self, Run};
use crate::{Cancel, Error, Response, Session};

/// One CLI process held for a multi-turn exchange ([`Session::conversation`]).
///
/// Unlike [`Session::query`], turns share context: the second turn sees the first. Costs:
/// the process is held (it counts against `concurrency`) until the conversation is dropped,
/// and every turn re-sends the exchange so far, so turns grow. Turns are throttled, budgeted
/// and counted like items, but not retried, because a replacement process would not have
/// the context. If the process dies mid-turn after earlier turns, the context is gone: that
/// turn fails as it failed, and every later turn fails with [`Error::ConversationLost`]
/// (start a new conversation).
///
/// [`with_cancel`](Self::with_cancel) stops it from another thread: a turn in flight ends at
/// once with [`Error::Cancelled`] (its process is killed, so the context is gone), and later
/// turns are refused. [`Session::close`] ends a turn in flight with [`Error::Closed`].
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
    run: Run,
    /// The connection (a CLI process) the context lives in.
    conn: RefCell<Option<Box<dyn Conn>>>,
    turns: u32,
    /// Turns whose context died with the process; later turns are refused.
    lost: Option<u32>,
}

impl Session {
    /// Hold one process for a multi-turn exchange that keeps its context. The process counts
    /// against `concurrency` until the conversation is dropped. Each turn re-sends the whole
    /// exchange so far, so turns grow in tokens and cost.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().build()?;
    /// let mut chat = session.conversation();
    /// chat.send("My name is Ada.")?;
    /// let answer = chat.send("What is my name?")?;
    /// assert!(answer.text.contains("Ada"));
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn conversation(&self) -> Conversation {
        Conversation {
            run: Run::conversation(self, None),
            conn: RefCell::new(None),
            turns: 0,
            lost: None,
        }
    }
}

impl Conversation {
    /// Stop this conversation when `cancel` is set, as the adaptors' `with_cancel` does: a
    /// turn in flight ends at once with [`Error::Cancelled`] (its process is killed: a turn
    /// holds it, and waiting for the answer could take minutes), and every later turn is
    /// refused with [`Error::Cancelled`] without a call. A turn ended that way loses the
    /// context of the turns before it.
    ///
    /// # Examples
    ///
    /// ```
    /// claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::{Cancel, Error, Session};
    ///
    /// let session = Session::builder().simulated()?.build()?;
    /// let cancel = Cancel::new();
    /// let mut chat = session.conversation().with_cancel(&cancel);
    /// chat.send("The answer is 42.")?;
    /// cancel.cancel(); // from a Ctrl-C handler, say
    /// assert!(matches!(chat.send("What is the answer?"), Err(Error::Cancelled)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_cancel(mut self, cancel: &Cancel) -> Self {
        self.run = Run::conversation(self.run.session(), Some(cancel));
        self
    }

    /// Send the next turn and wait for its answer.
    ///
    /// # Errors
    ///
    /// As [`Session::query`], without retries; [`Error::ConversationLost`] once the context
    /// is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// claude_rayon::simulator::serve_if_requested();
    /// let session = claude_rayon::Session::builder().simulated()?.build()?;
    /// let mut chat = session.conversation();
    /// chat.send("The answer is 42.")?;
    /// chat.send("What is the answer?")?;
    /// assert_eq!(chat.turns(), 2);
    /// assert!(!chat.is_lost());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, prompt: impl AsRef<str>) -> Result<Response, Error> {
        if self.run.session().is_closed() {
            // Let the process go now rather than when the conversation is dropped.
            drop(self.conn.get_mut().take());
            return Err(Error::Closed);
        }
        if let Some(turns) = self.lost {
            // A stopped conversation (cancelled, say) refuses as stopped, through the engine
            // so that the turn is counted like any refused item.
            if self.run.stop_reason().is_none() {
                return Err(Error::ConversationLost { turns });
            }
        }
        match self.conn.get_mut() {
            Some(conn) if self.turns > 0 => conn.keep_context(),
            // A new process: the context starts here.
            _ => self.turns = 0,
        }
        let outcome = engine::turn(&self.run, &self.conn, prompt.as_ref());
        let reusable = self
            .conn
            .get_mut()
            .as_mut()
            .is_some_and(|conn| conn.is_reusable());
        if outcome.is_ok() {
            self.turns += 1;
        }
        if !reusable {
            if let Some(conn) = self.conn.get_mut().take() {
                drop(conn);
                if self.turns > 0 {
                    self.lost = Some(self.turns);
                }
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
        // Given back before the session may go with `run`; the next user of the process
        // starts from a fresh context.
        drop(self.conn.get_mut().take());
    }
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("turns", &self.turns)
            .field("conn", &self.conn.borrow())
            .finish()
    }
}
