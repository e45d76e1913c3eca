//! One persistent `claude` process speaking stream-json, and how it is started and ended.
//!
//! Each child gets its own process group so that killing it also kills anything it started;
//! `spawner` starts it and watches that group.
//!
//! Fresh context per item: when a process goes back to the pool after an item, `/clear` is
//! written at once, so the reset runs while the process waits for its next item. Before the
//! next item is written, the clear's result is checked: it must be a local command (no model
//! turn) that started a new conversation (a new session id), and the item must then be
//! answered in that conversation. Anything else (a `--disable-slash-commands` flag, a skill
//! named `clear`, a CLI that changed) and the process is killed and replaced, so items never
//! share context.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::protocol::{self, Event, ResultLine};
use super::secrets::redact;
use super::{seal, spawner};
use crate::backend::{RateLimitInfo, TurnEvent, WindowStatus};
use crate::error::shorten;
use crate::{CliError, Error, Response, Usage};

/// How much of stderr an error message shows.
const STDERR_TAIL_SHOWN: usize = 4096;
/// How much is kept: the shown tail plus a margin for redacting a secret cut at the front.
const STDERR_TAIL_BYTES: usize = STDERR_TAIL_SHOWN + 1024;
/// How long a process may take to exit after its stdin closes before it is killed.
const GRACEFUL_EXIT: Duration = Duration::from_millis(500);

/// What the process needs to start.
#[derive(Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub secrets: Arc<Vec<String>>,
    /// Send an item's text as the CLI's own input syntax (`@` files, `/` commands).
    pub interpret_item_text: bool,
    /// How long a context reset may take before the process is given up.
    pub clear_timeout: Duration,
    /// The longest stdout line read.
    pub max_line_bytes: usize,
    /// How the session's processes failed to start, shared by them.
    pub start_failures: Arc<StartFailures>,
}

/// The last way a process of a session failed to start (it exited before writing a line),
/// so that the second start that fails the same way is fatal instead of retried for every
/// item: a CLI given a flag it does not know fails at every start.
#[derive(Default)]
pub(crate) struct StartFailures {
    last: Mutex<Option<(Option<i32>, String)>>,
}

impl StartFailures {
    /// Note a failed start; true when the last one failed the same way.
    fn repeated(&self, code: Option<i32>, stderr: &str) -> bool {
        let mut last = self.last.lock();
        if last
            .as_ref()
            .is_some_and(|(c, e)| *c == code && e == stderr)
        {
            return true;
        }
        *last = Some((code, stderr.to_string()));
        false
    }

    /// A process started: failures before it say nothing about the next start.
    fn started(&self) {
        *self.last.lock() = None;
    }
}

/// A line from the stdout reader thread.
enum Out {
    Line(String),
    /// A line longer than the cap (in bytes); nothing more is read.
    TooLong(usize),
    Eof,
    Failed(std::io::Error),
}

/// One API call of a turn, as its stream (or its whole message) showed it.
#[derive(Debug, Clone, Default)]
struct Call {
    id: String,
    /// Shown by its stream (`message_start`), not only as a whole message.
    streamed: bool,
    text: String,
    tool_use: bool,
    /// Why the call ended: from its stream's `message_delta`, or from its message when it
    /// came whole. `None` for a streamed call means its stream ended before the API said.
    stop_reason: Option<String>,
    /// The CLI added a message of its own after this call (a request to resume, to answer
    /// again), so the next call goes on from this one instead of repeating it.
    followed_by_cli_message: bool,
}

impl Call {
    /// A streamed call whose stream ended before the API said why it stopped.
    fn was_cut(&self) -> bool {
        self.streamed && self.stop_reason.is_none()
    }
}

/// Every API call of a turn, in order, as its lines show them: each stream start (a cut
/// stream included) and each message that came whole (a call made without streaming shows
/// only as its message). Ids do not tell calls apart: a gateway may reuse them.
#[derive(Debug, Default)]
struct CallLog {
    calls: Vec<Call>,
}

impl CallLog {
    /// Take in one event about the turn's calls; returns what the throttle and the
    /// statistics must know at once: a call began (the turn's first, or one more).
    fn note(&mut self, event: Event) -> Option<TurnEvent> {
        match event {
            Event::CallStarted { id } => self.push(Call {
                id,
                streamed: true,
                ..Call::default()
            }),
            Event::CallStopped { stop_reason } => {
                // A `message_delta` belongs to the stream that started last.
                if let Some(call) = self.calls.last_mut().filter(|c| c.streamed) {
                    call.stop_reason = Some(stop_reason);
                }
                None
            }
            Event::CliMessage => {
                if let Some(call) = self.calls.last_mut() {
                    call.followed_by_cli_message = true;
                }
                None
            }
            Event::Assistant {
                id,
                text,
                tool_use,
                stop_reason,
            } => {
                // A streamed message shows as one line per content block, without a stop
                // reason (its `message_delta` comes after); a message that came whole
                // carries its stop reason and is a call of its own.
                let same_message = self.calls.last().is_some_and(|last| {
                    !last.followed_by_cli_message
                        && last.id == id
                        && if last.streamed {
                            stop_reason.is_none() && last.stop_reason.is_none()
                        } else {
                            !id.is_empty() && stop_reason == last.stop_reason
                        }
                });
                match self.calls.last_mut() {
                    Some(last) if same_message => {
                        last.text.push_str(&text);
                        last.tool_use |= tool_use;
                        None
                    }
                    _ => self.push(Call {
                        id,
                        text,
                        tool_use,
                        stop_reason,
                        ..Call::default()
                    }),
                }
            }
            _ => None,
        }
    }

    fn push(&mut self, call: Call) -> Option<TurnEvent> {
        self.calls.push(call);
        Some(if self.calls.len() > 1 {
            TurnEvent::ExtraCall
        } else {
            TurnEvent::Began
        })
    }

    fn into_calls(self) -> Vec<Call> {
        self.calls
    }
}

/// What a turn's calls say beyond its result line.
#[derive(Debug, Clone, Copy, Default)]
struct TurnShape {
    /// API calls the turn made (every stream start and every message that came whole).
    calls: u32,
    /// Times the CLI asked the model to go on after a cut answer.
    continuations: u32,
}

/// Lets another thread (a session's `close()`) kill a process it does not own, without ever
/// signalling a pid that was already reaped and may belong to someone else.
pub(crate) struct KillSwitch {
    pid: u32,
    reaped: Mutex<bool>,
}

impl KillSwitch {
    /// Kill the process's group, unless it was already reaped.
    pub(crate) fn kill(&self) {
        let reaped = self.reaped.lock();
        if !*reaped {
            kill_group(self.pid);
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

/// A running CLI process.
pub(crate) struct CliProcess {
    kill_switch: Arc<KillSwitch>,
    /// Prompts this process was given (items and conversation turns), for recycling.
    prompts_run: u64,
    child: Child,
    /// Bytes for stdin go to a writer thread, so a CLI that stops reading cannot block a
    /// worker past its deadline; dropping the sender closes stdin.
    stdin: Option<Sender<Vec<u8>>>,
    /// One acknowledgement per write, from the writer thread.
    written: Receiver<std::io::Result<()>>,
    /// Set once the child has been waited for: its pid (and group id) may then belong to
    /// someone else, so no signal may be sent to it.
    reaped: bool,
    /// What the last failed turn cost, as the CLI reported it (error results are billed too).
    failed_turn_cost: Option<(f64, Usage)>,
    stdout: Receiver<Out>,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    /// Closed by the stderr thread at end of stream, so an exit report has all of stderr.
    stderr_done: Receiver<()>,
    /// Closed by the stdout thread at end of stream, so an exit report knows whether the
    /// process wrote anything.
    stdout_done: Receiver<()>,
    /// Set at the first line the process wrote: it started (the CLI writes nothing before).
    spoke: Arc<AtomicBool>,
    start_failures: Arc<StartFailures>,
    secrets: Arc<Vec<String>>,
    /// The CLI reports cost as a running total per process; an item's cost is the difference.
    last_total_cost: f64,
    /// The context holds an earlier item; `/clear` goes before the next prompt.
    needs_clear: bool,
    /// A `/clear` was written and its result not read yet.
    clear_pending: bool,
    /// The conversation (session id) the last result belonged to.
    last_session_id: Option<String>,
    /// The conversation a verified `/clear` started: the next answer must belong to it.
    cleared_session_id: Option<String>,
    interpret_item_text: bool,
    clear_timeout: Duration,
    /// A failure left the process in an unknown state: do not reuse it.
    broken: bool,
    /// The last `rejected` usage window the current turn reported.
    rejected_window: Option<RateLimitInfo>,
}

impl CliProcess {
    /// Start a process. Returns as soon as it is forked; the CLI loads while the first prompt
    /// waits in its stdin pipe, so start-ups of several processes overlap.
    ///
    /// `loaded` is set at the process's first line (it has loaded) or when its stdout ends.
    pub(crate) fn spawn(launch: &Launch, loaded: Arc<AtomicBool>) -> Result<CliProcess, Error> {
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Inside Claude Code, the CLI refuses to nest; our children are not nested sessions.
            .env_remove("CLAUDECODE")
            // Marks the CLI and what it starts for the watchdog (see `spawner`).
            .env(spawner::OWNER_ENV_VAR, spawner::owner_marker_value());
        for k in &launch.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &launch.cwd {
            cmd.current_dir(dir);
        }
        prepare_child(&mut cmd);
        let mut child = spawner::spawn(cmd).map_err(|e| {
            Error::Cli(CliError::Spawn {
                path: launch.program.clone(),
                source: Arc::new(e),
            })
        })?;
        let child_stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = crossbeam_channel::unbounded();
        let pid = child.id();
        let max_line = launch.max_line_bytes;
        let loaded_by_reader = Arc::clone(&loaded);
        let spoke = Arc::new(AtomicBool::new(false));
        let spoke_by_reader = Arc::clone(&spoke);
        let start_failures = Arc::clone(&launch.start_failures);
        let (stdout_done_tx, stdout_done_rx) = crossbeam_channel::bounded::<()>(0);
        let (stdin_tx, stdin_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name(format!("claude-rayon-stdin-{pid}"))
            .spawn(move || write_stdin(child_stdin, stdin_rx, ack_tx))
            .map_err(|e| abandon(&mut child, e))?;
        thread::Builder::new()
            .name(format!("claude-rayon-stdout-{pid}"))
            .spawn(move || {
                read_stdout(stdout, tx, max_line, &mut || {
                    spoke_by_reader.store(true, Ordering::SeqCst);
                    loaded_by_reader.store(true, Ordering::SeqCst);
                    start_failures.started();
                });
                loaded_by_reader.store(true, Ordering::SeqCst);
                drop(stdout_done_tx);
            })
            .map_err(|e| abandon(&mut child, e))?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_BYTES)));
        let tail_writer = Arc::clone(&tail);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        thread::Builder::new()
            .name(format!("claude-rayon-stderr-{pid}"))
            .spawn(move || {
                drain_stderr(stderr, tail_writer);
                drop(done_tx);
            })
            .map_err(|e| abandon(&mut child, e))?;
        log::debug!("started claude process {pid}");
        Ok(CliProcess {
            kill_switch: Arc::new(KillSwitch {
                pid,
                reaped: Mutex::new(false),
            }),
            prompts_run: 0,
            child,
            stdin: Some(stdin_tx),
            written: ack_rx,
            reaped: false,
            failed_turn_cost: None,
            stdout: rx,
            stderr_tail: tail,
            stderr_done: done_rx,
            stdout_done: stdout_done_rx,
            spoke,
            start_failures: Arc::clone(&launch.start_failures),
            secrets: Arc::clone(&launch.secrets),
            last_total_cost: 0.0,
            needs_clear: false,
            clear_pending: false,
            last_session_id: None,
            cleared_session_id: None,
            interpret_item_text: launch.interpret_item_text,
            clear_timeout: launch.clear_timeout,
            broken: false,
            rejected_window: None,
        })
    }

    /// A handle another thread can kill this process with.
    pub(crate) fn kill_switch(&self) -> Arc<KillSwitch> {
        Arc::clone(&self.kill_switch)
    }

    /// The operating system's id of the process.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many prompts (items, conversation turns) this process was given.
    pub(crate) fn prompts_run(&self) -> u64 {
        self.prompts_run
    }

    /// Whether the process can take another item.
    pub(crate) fn is_reusable(&mut self) -> bool {
        !self.broken && !self.reaped && !self.has_exited()
    }

    /// Whether the child has exited, without reaping it: an unreaped child keeps its pid, so
    /// its process group can still be signalled safely.
    fn has_exited(&self) -> bool {
        if self.reaped {
            return true;
        }
        let pid: libc::id_t = self.child.id();
        // SAFETY: waitid only writes into the siginfo we pass; WNOWAIT leaves the child
        // waitable, so std's own wait still reaps it later.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        }
    }

    /// Whether the process has not written a line yet. A CLI writes nothing before it has
    /// loaded and read its first prompt, so a process that ended so never sent a request.
    pub(crate) fn said_nothing(&self) -> bool {
        !self.spoke.load(Ordering::SeqCst)
    }

    /// The cost and usage of the last failed turn, once (error results are billed too).
    pub(crate) fn take_failed_turn_cost(&mut self) -> Option<(f64, Usage)> {
        self.failed_turn_cost.take()
    }

    /// Keep the context for the next prompt (a conversation's next turn).
    pub(crate) fn keep_context(&mut self) {
        self.needs_clear = false;
    }

    /// Forget the context before the next prompt (fresh context per item).
    pub(crate) fn mark_dirty(&mut self) {
        self.needs_clear = true;
    }

    /// Start resetting the context now, while the process waits for its next item; the
    /// result is checked by [`settle_clear`](Self::settle_clear). Does nothing when the
    /// context holds no earlier item.
    pub(crate) fn begin_clear(&mut self) {
        if !self.needs_clear || self.clear_pending || self.broken {
            return;
        }
        let deadline = Instant::now() + self.clear_timeout;
        let line = protocol::user_line(protocol::CLEAR).into_bytes();
        if self.write(line, deadline, self.clear_timeout).is_ok() {
            self.clear_pending = true;
            self.needs_clear = false;
        }
    }

    /// Finish a context reset begun earlier (or do one now if the context is dirty) and
    /// check that it started a new conversation. On failure the process is broken.
    pub(crate) fn settle_clear(&mut self) -> Result<(), Error> {
        if self.needs_clear {
            self.begin_clear();
            if !self.clear_pending {
                self.broken = true;
                return Err(Error::Cli(CliError::ContextNotReset(
                    "the /clear could not be written".into(),
                )));
            }
        }
        if !self.clear_pending {
            return Ok(());
        }
        let timeout = self.clear_timeout;
        let (result, _) = self.next_result(Instant::now() + timeout, timeout, &mut |_| {})?;
        self.clear_pending = false;
        let previous = self.last_session_id.take();
        let problem = if result.is_error {
            Some(format!(
                "/clear failed: {}",
                shorten(result.result.as_deref().unwrap_or(""), 200)
            ))
        } else if result.num_turns != 0 {
            Some(format!(
                "/clear reached the model ({} turns) instead of resetting the context",
                result.num_turns
            ))
        } else if result.session_id.is_empty() {
            Some("the /clear result names no conversation".into())
        } else if previous.as_deref() == Some(result.session_id.as_str()) {
            Some("the conversation did not change after /clear".into())
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.kill();
                let problem = redact(&problem, &self.secrets);
                log::warn!("claude process {} did not reset its context between items ({problem}); it was killed and will be replaced", self.pid());
                Err(self.redact_error(Error::Cli(CliError::ContextNotReset(problem))))
            }
            None => {
                // The running cost total is per conversation in newer CLIs (2.1.332 starts
                // it again at 0 after /clear) and per process in older ones: the clear's
                // result says which, so the next item's cost is a difference from it.
                self.last_total_cost = result.total_cost_usd;
                self.cleared_session_id = Some(result.session_id.clone());
                self.last_session_id = Some(result.session_id);
                Ok(())
            }
        }
    }

    /// Run one prompt to its result. The context must be clean or kept on purpose: a reset
    /// still pending is finished first. On any error but an API-level one, the process is
    /// marked broken.
    pub(crate) fn run_turn(
        &mut self,
        prompt: &str,
        timeout: Duration,
        want_structured: bool,
        on_event: &mut dyn FnMut(TurnEvent),
    ) -> Result<Response, Error> {
        let started = Instant::now();
        let deadline = crate::clock::saturating_add(started, timeout);
        self.settle_clear()?;
        let text = seal::item_text(prompt, self.interpret_item_text);
        self.prompts_run += 1;
        self.failed_turn_cost = None;
        // Broken until the result is read: if anything unwinds meanwhile, the process is not
        // reused with a turn half done.
        self.broken = true;
        self.write(protocol::user_line(&text).into_bytes(), deadline, timeout)?;
        let mut api_retries = 0;
        let (mut result, calls) = self.next_result(deadline, timeout, &mut |event| {
            if matches!(event, TurnEvent::Retry { .. }) {
                api_retries += 1;
            }
            on_event(event);
        })?;
        // A subscription limit reached: the CLI exits after saying so, so the process is
        // not reused (a write to it would fail another item).
        let limit = protocol::usage_limit(&result, self.rejected_window.take().as_ref());
        let used_up = limit.is_some();
        let judged = match limit {
            Some(error) => Err(error),
            None => whole_answer(&mut result, &calls, want_structured),
        };
        let shape = TurnShape {
            calls: calls.len() as u32,
            continuations: *judged.as_ref().unwrap_or(&0),
        };
        self.broken = false;
        self.needs_clear = true;
        if let Some(expected) = self.cleared_session_id.take() {
            if result.session_id != expected {
                self.kill();
                return Err(Error::Cli(CliError::ContextNotReset(
                    "the item was answered outside the conversation its /clear started".into(),
                )));
            }
        }
        if !result.session_id.is_empty() {
            self.last_session_id = Some(result.session_id.clone());
        }
        let outcome = self.finish(result, started, api_retries, want_structured, shape, judged);
        if used_up {
            self.broken = true;
        }
        outcome
    }

    /// Read stdout until the next `result` line, answering control requests and reporting
    /// the CLI's own retries and every API call on the way.
    fn next_result(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        on_event: &mut dyn FnMut(TurnEvent),
    ) -> Result<(ResultLine, Vec<Call>), Error> {
        let mut calls = CallLog::default();
        self.rejected_window = None;
        loop {
            let event = match self.stdout.recv_deadline(deadline) {
                Ok(Out::Line(line)) => match protocol::parse_line(&line) {
                    Ok(event) => event,
                    Err(Error::Cli(CliError::Protocol { reason, .. })) => {
                        self.broken = true;
                        // Redact the whole line before shortening: a cut secret is no longer
                        // recognisable.
                        let line = redact(line.trim(), &self.secrets);
                        return Err(Error::Cli(CliError::Protocol {
                            reason,
                            line: shorten(&line, 200),
                        }));
                    }
                    Err(err) => {
                        self.broken = true;
                        return Err(self.redact_error(err));
                    }
                },
                Ok(Out::Eof) => return Err(self.exited(deadline)),
                Ok(Out::TooLong(cap)) => {
                    self.kill();
                    return Err(Error::Cli(CliError::Protocol {
                        reason: format!(
                            "the CLI wrote a line longer than {cap} bytes (cli(|c| c.max_line_bytes(..))); its process was killed"
                        ),
                        line: String::new(),
                    }));
                }
                Ok(Out::Failed(e)) => {
                    self.broken = true;
                    return Err(self.redact_error(Error::io(e)));
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.broken = true;
                    self.kill();
                    return Err(Error::Timeout(timeout));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.exited(deadline)),
            };
            match event {
                Event::Result(result) => return Ok((result, calls.into_calls())),
                Event::ControlRequest {
                    request_id,
                    subtype,
                } => {
                    log::debug!("answering unexpected control_request {subtype} with an error");
                    let line = protocol::control_error_line(&request_id, &subtype);
                    self.write(line.into_bytes(), deadline, timeout)?;
                }
                Event::ApiRetry {
                    attempt,
                    delay_ms,
                    status,
                } => {
                    log::debug!(
                        "the CLI retries an API call (attempt {attempt}, status {status:?}, in {delay_ms} ms)"
                    );
                    on_event(TurnEvent::Retry {
                        status,
                        delay: Duration::from_millis(delay_ms),
                    });
                }
                Event::RateLimit(info) => {
                    log::debug!("the CLI reports a usage window: {info:?}");
                    if info.status == WindowStatus::Rejected {
                        self.rejected_window = Some(info.clone());
                    }
                    on_event(TurnEvent::UsageWindow(info));
                }
                Event::Other => {}
                event => {
                    if let Some(began) = calls.note(event) {
                        on_event(began);
                    }
                }
            }
        }
    }

    fn finish(
        &mut self,
        result: ResultLine,
        started: Instant,
        api_retries: u32,
        want_structured: bool,
        shape: TurnShape,
        judged: Result<u32, Error>,
    ) -> Result<Response, Error> {
        let total = result.total_cost_usd;
        // A total lower than the last one means the CLI restarted its count.
        let cost = if total >= self.last_total_cost {
            total - self.last_total_cost
        } else {
            total
        };
        self.last_total_cost = total;
        let usage = result.usage;
        let result = match judged.and_then(|_| result.into_outcome(want_structured)) {
            Ok(result) => result,
            Err(error) => {
                self.failed_turn_cost = Some((cost, usage));
                return Err(self.redact_error(error));
            }
        };
        Ok(Response {
            text: result.result.unwrap_or_default(),
            structured: result.structured_output,
            usage: result.usage,
            cost_usd: cost,
            duration: started.elapsed(),
            num_turns: result.num_turns,
            session_id: result.session_id,
            api_retries,
            stop_reason: result.stop_reason,
            continuations: shape.continuations,
            api_calls: shape.calls.max(1),
            replayed: false,
        })
    }

    /// Hand bytes to the writer thread and wait for them to be written, until the deadline.
    fn write(&mut self, bytes: Vec<u8>, deadline: Instant, timeout: Duration) -> Result<(), Error> {
        let sent = self.stdin.as_ref().is_some_and(|tx| tx.send(bytes).is_ok());
        if !sent {
            self.broken = true;
            return Err(self.exited(deadline));
        }
        match self.written.recv_deadline(deadline) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                self.broken = true;
                if err.kind() == std::io::ErrorKind::BrokenPipe {
                    return Err(self.exited(deadline.min(Instant::now() + GRACEFUL_EXIT)));
                }
                Err(self.redact_error(Error::io(err)))
            }
            Err(RecvTimeoutError::Timeout) => {
                // The CLI stopped reading: killing it fails the blocked write, ending the thread.
                self.broken = true;
                self.kill();
                Err(Error::Timeout(timeout))
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.broken = true;
                Err(self.exited(deadline))
            }
        }
    }

    /// Stdout ended: wait briefly for the exit status and report it with stderr's tail.
    fn exited(&mut self, deadline: Instant) -> Error {
        self.broken = true;
        let wait_until = deadline.min(Instant::now() + GRACEFUL_EXIT);
        while !self.has_exited() && Instant::now() < wait_until {
            thread::sleep(Duration::from_millis(2));
        }
        let killed_by_library = !self.reaped && !self.has_exited();
        let status = self.reap();
        // Stdout may close before the last of stderr has been read, and a failed write may
        // come before the reader has seen what the process wrote.
        let _ = self
            .stderr_done
            .recv_deadline(Instant::now() + GRACEFUL_EXIT);
        let _ = self
            .stdout_done
            .recv_deadline(Instant::now() + GRACEFUL_EXIT);
        use std::os::unix::process::ExitStatusExt;
        let code = status.and_then(|s| s.code());
        let stderr_tail = self.stderr_tail();
        // Exited by itself before a line: it did not start. The second start that fails the
        // same way is fatal (a signal from outside is no word of the CLI's).
        if self.said_nothing() && code.is_some() && self.start_failures.repeated(code, &stderr_tail)
        {
            return Error::Cli(CliError::CannotStart {
                code,
                stderr: stderr_tail,
            });
        }
        Error::Cli(CliError::ProcessExited {
            code,
            signal: status.and_then(|s| s.signal()),
            stderr_tail,
            killed_by_library,
        })
    }

    /// The last lines of stderr, secrets removed.
    pub(crate) fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock();
        let bytes: Vec<u8> = tail.iter().copied().collect();
        drop(tail);
        // The buffer keeps a margin before the tail shown, so a secret cut at the front of the
        // buffer is redacted whole or dropped with the margin, never shown in part.
        let text = redact(&String::from_utf8_lossy(&bytes), self.secrets.as_slice());
        let mut start = text.len().saturating_sub(STDERR_TAIL_SHOWN);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].trim().to_string()
    }

    fn redact_error(&self, err: Error) -> Error {
        let clean = |text: String| redact(&text, &self.secrets);
        match err {
            Error::Cli(CliError::Protocol { reason, line }) => Error::Cli(CliError::Protocol {
                reason,
                line: clean(line),
            }),
            Error::Api { status, message } => Error::Api {
                status,
                message: clean(message),
            },
            Error::Authentication { message } => Error::Authentication {
                message: clean(message),
            },
            Error::Cli(CliError::Execution { subtype, message }) => {
                Error::Cli(CliError::Execution {
                    subtype,
                    message: clean(message),
                })
            }
            Error::StructuredOutputMissing { text } => {
                Error::StructuredOutputMissing { text: clean(text) }
            }
            Error::StructuredOutputInvalid(message) => {
                Error::StructuredOutputInvalid(clean(message))
            }
            Error::Refused { message } => Error::Refused {
                message: clean(message),
            },
            Error::ModelNotFound { message } => Error::ModelNotFound {
                message: clean(message),
            },
            Error::Truncated {
                stop_reason,
                partial,
            } => Error::Truncated {
                stop_reason,
                partial: clean(partial),
            },
            Error::IncompleteAnswer {
                stop_reason,
                partial,
            } => Error::IncompleteAnswer {
                stop_reason,
                partial: clean(partial),
            },
            Error::Cli(CliError::ContextNotReset(message)) => {
                Error::Cli(CliError::ContextNotReset(clean(message)))
            }
            Error::UsageLimitReached {
                window,
                resets_at,
                message,
            } => Error::UsageLimitReached {
                window,
                resets_at,
                message: clean(message),
            },
            Error::SpendLimitReached { message } => Error::SpendLimitReached {
                message: clean(message),
            },
            other => other,
        }
    }

    /// Kill the whole group before reaping (the unreaped leader keeps the group id ours), then
    /// reap. Returns the exit status when there was one to collect.
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        self.stdin = None;
        // Marked under the switch's lock before waiting: from here on no other thread
        // signals this pid.
        *self.kill_switch.reaped.lock() = true;
        kill_group(self.child.id());
        spawner::forget(self.child.id());
        self.reaped = true;
        self.child.wait().ok()
    }

    /// Kill the process (and its group) at once and reap it.
    pub(crate) fn kill(&mut self) {
        self.broken = true;
        self.reap();
    }

    /// Close stdin and give the CLI a moment to exit on its own (it does in ~25 ms); then kill
    /// whatever is left in its group and reap.
    pub(crate) fn shutdown(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + GRACEFUL_EXIT;
        while !self.has_exited() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        self.reap();
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        self.reap();
        log::debug!("claude process {} ended", self.child.id());
    }
}

/// Check a turn's calls against its result line, and put the whole answer in the result.
///
/// - A call refused (`stop_reason: refusal`) makes the turn a refusal, even when the CLI
///   asked again by itself (2.1.332) and the second answer is the result.
/// - When the CLI had the model go on, by itself, from a cut answer (after `max_tokens`, or
///   after a stream that ended without a stop reason when it then asked to resume), its
///   result holds only the last part: the answer is every part in order. A call cut and
///   sent again as it was (no message of the CLI's in between) is not a part.
/// - The answer's own call must have finished: a stream that ended without a stop reason
///   (2.1.197 takes the part for the answer) or a paused turn is an incomplete answer.
///
/// Turns that used tools and structured answers keep their result (the CLI checks a
/// structured answer whole). Returns how many times the answer was continued.
fn whole_answer(
    result: &mut ResultLine,
    calls: &[Call],
    want_structured: bool,
) -> Result<u32, Error> {
    if result.stop_reason.as_deref() != Some("refusal")
        && calls
            .iter()
            .any(|c| c.stop_reason.as_deref() == Some("refusal"))
    {
        return Err(Error::Refused {
            message: "the model refused to answer (stop_reason: refusal); the CLI asked it \
                      again by itself, and what it answered then is not taken for the answer"
                .into(),
        });
    }
    if result.is_error || !matches!(result.subtype.as_str(), "success" | "") {
        return Ok(0);
    }
    let mut continuations = 0;
    let plain = !want_structured && !calls.iter().any(|c| c.tool_use);
    if let Some(last) = calls
        .iter()
        .rposition(|c| !c.text.is_empty())
        .filter(|_| plain)
    {
        let continued = |call: &Call| match call.stop_reason.as_deref() {
            Some("max_tokens") => true,
            None => call.was_cut() && call.followed_by_cli_message,
            Some(_) => false,
        };
        let first = calls[..last]
            .iter()
            .rposition(|c| !continued(c))
            .map_or(0, |i| i + 1);
        if first < last {
            let mut whole: String = calls[first..last].iter().map(|c| c.text.as_str()).collect();
            // The result line holds the last part in full.
            whole.push_str(result.result.as_deref().unwrap_or(&calls[last].text));
            result.result = Some(whole);
            continuations = (last - first) as u32;
        }
    }
    let answer_call = calls.last();
    let paused = result.stop_reason.as_deref() == Some("pause_turn")
        || answer_call.is_some_and(|c| c.stop_reason.as_deref() == Some("pause_turn"));
    let cut = !want_structured && answer_call.is_some_and(Call::was_cut);
    if paused || cut {
        return Err(Error::IncompleteAnswer {
            stop_reason: paused.then(|| "pause_turn".to_string()),
            partial: result.result.clone().unwrap_or_default(),
        });
    }
    Ok(continuations)
}

/// A child whose helper threads could not start: kill its group, stop watching it, reap it.
fn abandon(child: &mut Child, error: std::io::Error) -> Error {
    kill_group(child.id());
    spawner::forget(child.id());
    let _ = child.wait();
    Error::io(error)
}

/// The writer thread: one acknowledgement per write, and stdin closes when the sender goes.
fn write_stdin(
    mut stdin: ChildStdin,
    bytes: Receiver<Vec<u8>>,
    written: Sender<std::io::Result<()>>,
) {
    spawner::block_sigpipe();
    for chunk in bytes {
        let result = stdin.write_all(&chunk).and_then(|()| stdin.flush());
        let failed = result.is_err();
        if written.send(result).is_err() || failed {
            return;
        }
    }
}

/// Read stdout into `tx`, line by line; `first_line` runs once, at the first line.
fn read_stdout(stdout: impl Read, tx: Sender<Out>, max_line: usize, first_line: &mut dyn FnMut()) {
    let mut spoke = false;
    // A 10 MB answer is one line, so the cap is large; past it the line is not kept, so a
    // CLI that writes without end cannot take the program's memory with it.
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    loop {
        let mut line = Vec::new();
        let limit = u64::try_from(max_line)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
            Ok(0) => {
                let _ = tx.send(Out::Eof);
                return;
            }
            Ok(n) if n > max_line && line.last() != Some(&b'\n') => {
                let _ = tx.send(Out::TooLong(max_line));
                return;
            }
            Ok(_) => {
                if !spoke {
                    spoke = true;
                    first_line();
                }
                let line = String::from_utf8(line)
                    // Not UTF-8: report it as a protocol problem through the parser.
                    .unwrap_or_else(|_| "<line is not valid UTF-8>".into());
                if tx.send(Out::Line(line)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Out::Failed(e));
                return;
            }
        }
    }
}

fn drain_stderr(stderr: impl Read, tail: Arc<Mutex<VecDeque<u8>>>) {
    // A full stderr pipe would block the child, so read it all, keeping only the tail.
    let mut reader = BufReader::new(stderr);
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut tail = tail.lock();
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
        }
    }
}

/// Kill a whole process group (the child is its leader). Only for a child not yet reaped:
/// after that its id may belong to someone else.
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: killpg with a positive group id only sends a signal.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn prepare_child(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    let lock_limit = spawner::lock_limit();
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, setrlimit, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            // Die with the program, even if it is killed with SIGKILL.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The mark the watchdog finds what the CLI starts by, whatever it does to its
            // environment and group (see `spawner`).
            if let Some((marker, hard)) = lock_limit {
                let limit = libc::rlimit {
                    rlim_cur: marker,
                    rlim_max: hard,
                };
                libc::setrlimit(libc::RLIMIT_LOCKS, &limit);
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn prepare_child(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    // The lines of a turn as the CLIs print them with `--include-partial-messages`
    // (measured against the mock API; fields this crate does not read left out).
    fn start(id: &str) -> String {
        format!(
            r#"{{"type":"stream_event","event":{{"message":{{"content":[],"id":"{id}","model":"m","role":"assistant","stop_reason":null}},"type":"message_start"}}}}"#
        )
    }
    fn streamed_text(id: &str, text: &str) -> Vec<String> {
        vec![
            r#"{"type":"stream_event","event":{"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}}"#.into(),
            format!(r#"{{"type":"stream_event","event":{{"delta":{{"text":"{text}","type":"text_delta"}},"index":0,"type":"content_block_delta"}}}}"#),
            format!(r#"{{"type":"assistant","message":{{"content":[{{"text":"{text}","type":"text"}}],"id":"{id}","model":"m","role":"assistant","stop_reason":null}}}}"#),
            r#"{"type":"stream_event","event":{"index":0,"type":"content_block_stop"}}"#.into(),
        ]
    }
    fn delta(stop_reason: &str) -> String {
        format!(
            r#"{{"type":"stream_event","event":{{"delta":{{"stop_reason":"{stop_reason}","stop_sequence":null}},"type":"message_delta","usage":{{}}}}}}"#
        )
    }
    fn message_stop() -> String {
        r#"{"type":"stream_event","event":{"type":"message_stop"}}"#.into()
    }
    /// A call made without streaming: its message alone, with its stop reason.
    fn whole(id: &str, text: &str, stop_reason: &str) -> String {
        format!(
            r#"{{"type":"assistant","message":{{"content":[{{"text":"{text}","type":"text"}}],"id":"{id}","model":"m","role":"assistant","stop_reason":"{stop_reason}"}}}}"#
        )
    }
    /// A message the CLI adds by itself (2.1.332).
    fn cli_message(text: &str) -> String {
        format!(
            r#"{{"type":"user","message":{{"role":"user","content":[{{"type":"text","text":"{text}"}}]}},"isSynthetic":true}}"#
        )
    }
    fn result_line(text: &str, stop_reason: Option<&str>) -> String {
        let stop = stop_reason.map_or("null".to_string(), |r| format!("\"{r}\""));
        format!(
            r#"{{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"{text}","stop_reason":{stop},"session_id":"s","total_cost_usd":0}}"#
        )
    }
    /// A whole streamed call: start, text, stop reason, stop.
    fn call(id: &str, text: &str, stop_reason: &str) -> Vec<String> {
        let mut lines = vec![start(id)];
        lines.extend(streamed_text(id, text));
        lines.extend([delta(stop_reason), message_stop()]);
        lines
    }

    /// What a turn of these lines comes to: the verdict, the result as it then reads, the
    /// calls counted, and the throttle events.
    fn judge(lines: &[String]) -> (Result<u32, Error>, ResultLine, usize, Vec<TurnEvent>) {
        let mut log = CallLog::default();
        let mut events = Vec::new();
        for line in lines {
            match protocol::parse_line(line).unwrap() {
                Event::Result(mut result) => {
                    let calls = log.into_calls();
                    let verdict = whole_answer(&mut result, &calls, false);
                    return (verdict, result, calls.len(), events);
                }
                event => events.extend(log.note(event)),
            }
        }
        panic!("no result line");
    }

    #[test]
    fn a_stream_taken_for_the_answer_without_a_stop_reason_is_incomplete() {
        // 2.1.197: the stream ended after its text, with no message_delta or message_stop.
        let mut lines = vec![start("msg_1")];
        lines.extend(streamed_text("msg_1", "The boots left on the 3rd, "));
        lines.push(result_line("The boots left on the 3rd, ", None));
        let (verdict, _, calls, _) = judge(&lines);
        assert!(matches!(
            verdict,
            Err(Error::IncompleteAnswer { stop_reason: None, ref partial }) if partial == "The boots left on the 3rd, "
        ));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_stream_the_cli_resumed_is_joined_to_its_rest() {
        // 2.1.332: its own message_stop, the resume request, then the rest.
        let mut lines = vec![start("msg_1")];
        lines.extend(streamed_text("msg_1", "The boots left on the 3rd, "));
        lines.push(message_stop());
        lines.push(cli_message(
            "Your response above was cut off mid-stream. Resume directly",
        ));
        lines.extend(call("msg_2", "and arrive tomorrow.", "end_turn"));
        lines.push(result_line("and arrive tomorrow.", Some("end_turn")));
        let (verdict, result, calls, events) = judge(&lines);
        assert_eq!(verdict.unwrap(), 1);
        assert_eq!(
            result.result.as_deref(),
            Some("The boots left on the 3rd, and arrive tomorrow.")
        );
        assert_eq!(calls, 2);
        assert_eq!(events, [TurnEvent::Began, TurnEvent::ExtraCall]);
    }

    #[test]
    fn a_call_cut_and_sent_again_is_not_a_part() {
        // 2.1.197 after a cut connection: the call again without streaming, under the same
        // id here (a gateway that reuses ids).
        let mut lines = vec![start("msg_1")];
        lines.extend(streamed_text("msg_1", "The boots le"));
        lines.push(whole("msg_1", "The boots left on the 3rd.", "end_turn"));
        lines.push(result_line("The boots left on the 3rd.", Some("end_turn")));
        let (verdict, result, calls, _) = judge(&lines);
        assert_eq!(verdict.unwrap(), 0);
        assert_eq!(result.result.as_deref(), Some("The boots left on the 3rd."));
        assert_eq!(calls, 2);
        // 2.1.332 when the stream stopped inside its text: its own message_stop, no message.
        let lines = vec![
            start("msg_1"),
            message_stop(),
            whole("msg_2", "The boots left on the 3rd.", "end_turn"),
            result_line("The boots left on the 3rd.", Some("end_turn")),
        ];
        let (verdict, _, calls, _) = judge(&lines);
        assert_eq!((verdict.unwrap(), calls), (0, 2));
    }

    #[test]
    fn a_refusal_the_cli_asked_again_is_a_refusal() {
        let mut lines = call("msg_1", "I can't help with that.", "refusal");
        lines.push(cli_message(
            "Your response above was stopped by a safety classifier",
        ));
        lines.extend(call("msg_2", "Here it is anyway.", "end_turn"));
        lines.push(result_line("Here it is anyway.", Some("end_turn")));
        let (verdict, _, calls, _) = judge(&lines);
        assert!(matches!(verdict, Err(Error::Refused { .. })), "{verdict:?}");
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_paused_turn_is_incomplete() {
        let mut lines = call("msg_1", "Looking into it, ", "pause_turn");
        lines.push(result_line("Looking into it, ", Some("pause_turn")));
        let (verdict, _, _, _) = judge(&lines);
        assert!(matches!(
            verdict,
            Err(Error::IncompleteAnswer { stop_reason: Some(ref r), .. }) if r == "pause_turn"
        ));
    }

    #[test]
    fn continuations_are_calls_whatever_their_ids() {
        // A gateway that gives every response the same id; 2.1.197 prints no message of its
        // own between the parts.
        let mut lines = call("msg_same", "First, ", "max_tokens");
        lines.extend(call("msg_same", "second, ", "max_tokens"));
        lines.extend(call("msg_same", "last.", "end_turn"));
        lines.push(result_line("last.", Some("end_turn")));
        let (verdict, result, calls, _) = judge(&lines);
        assert_eq!(verdict.unwrap(), 2);
        assert_eq!(result.result.as_deref(), Some("First, second, last."));
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_message_in_several_blocks_is_one_call() {
        let mut lines = vec![start("msg_1")];
        lines.extend(streamed_text("msg_1", "One, "));
        lines.extend(streamed_text("msg_1", "two."));
        // A message_delta without message_stop: the API said why it stopped; it is whole.
        lines.push(delta("end_turn"));
        lines.push(result_line("One, two.", Some("end_turn")));
        let (verdict, result, calls, _) = judge(&lines);
        assert_eq!((verdict.unwrap(), calls), (0, 1));
        assert_eq!(result.result.as_deref(), Some("One, two."));
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let data = vec![b'x'; STDERR_TAIL_BYTES * 3];
        drain_stderr(&data[..], Arc::clone(&tail));
        assert_eq!(tail.lock().len(), STDERR_TAIL_BYTES);
    }

    #[test]
    fn huge_lines_are_read_whole() {
        let mut data = "y".repeat(3 * 1024 * 1024);
        data.push('\n');
        let (tx, rx) = crossbeam_channel::unbounded();
        read_stdout(data.as_bytes(), tx, data.len(), &mut || {});
        match rx.recv().unwrap() {
            Out::Line(l) => assert_eq!(l.len(), data.len()),
            _ => panic!("expected a line"),
        }
        assert!(matches!(rx.recv().unwrap(), Out::Eof));
    }

    #[test]
    fn a_line_over_the_cap_stops_the_reader() {
        let data = format!("{{}}\n{}", "z".repeat(5000));
        let (tx, rx) = crossbeam_channel::unbounded();
        read_stdout(data.as_bytes(), tx, 1000, &mut || {});
        assert!(matches!(rx.recv().unwrap(), Out::Line(l) if l == "{}\n"));
        assert!(matches!(rx.recv().unwrap(), Out::TooLong(1000)));
        assert!(rx.recv().is_err(), "nothing after a line over the cap");
    }
}
