//! A journal of answered items, so that a rerun pays only for what is not answered yet.
//!
//! - `format`: the lines (a header, then one checksummed JSON record per item) and the key.
//! - `commit`: the writes, grouped: many items wait on one `fsync`.
//!
//! Opening reads every whole record whose checksum holds into memory and cuts a torn last
//! line off the file; a record that fails its checksum is skipped, never replayed. A lock on
//! the file itself (its open file description, so every path to it, hard links included,
//! meets it) keeps a second program off the same journal; it dies with the program, `kill -9`
//! included. The file is never opened through a symbolic link at its path.

mod commit;
pub(crate) mod format;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{Error, Response};
use commit::GroupCommit;
use format::{BatchNote, Key, Record, HEADER, HEADER_V1};

/// A file of answered items: a rerun of the same program over the same inputs takes every
/// answer already in it without a call, and calls Claude only for the rest.
///
/// Give it to a session ([`SessionBuilder::journal`](crate::SessionBuilder::journal)) or to one
/// run (`with_journal` on the adaptors, [`PipelineBuilder::with_journal`](crate::pipeline::PipelineBuilder::with_journal)).
/// An item's answer is written (and synced to disk) before it is handed to you, keyed by
/// everything that decides it: the prompt exactly as sent, and the session's system prompts,
/// JSON schema, tools, effort, max turns, extra arguments and model, however the CLI process
/// gets it (the builder, `arg("--model")`, `ANTHROPIC_MODEL` set or inherited, the user's
/// `settings.json`; README, "Resume"). Change one item's text and only that item is asked
/// again; change the model and all are. Failed items are recorded too, for
/// inspection, but never replayed: a rerun tries them again.
///
/// A replayed answer has [`Response::replayed`] set and keeps the cost it had when it was
/// paid; the run's stats count it in [`Stats::replayed`](crate::Stats::replayed), at no cost.
///
/// The file is JSON lines (README, "Resume"): readable with `jq`, one record per item. A
/// `kill -9` loses at most the answers not yet written; a torn last line is cut off at the
/// next open. Two programs cannot open one journal at once, whatever path each gives (a hard
/// link or a linked folder reaches the same file): the second gets [`Error::JournalLocked`].
/// A symbolic link at the journal's own path is refused, never followed. Keys are SHA-256
/// digests, so a document cannot be crafted to take another's answer.
///
/// # Examples
///
/// ```
/// claude_rayon::simulator::serve_if_requested();
/// use claude_rayon::prelude::*;
/// use claude_rayon::{Journal, Session};
/// use rayon::prelude::*;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("answers.jsonl");
/// let session = Session::builder().simulated()?.concurrency(2).build()?;
/// let docs = ["first", "second"];
///
/// let journal = Journal::open(&path)?;
/// let first: Vec<_> = docs.par_iter().claude_map(&session, |d| *d).with_journal(&journal).collect();
/// assert!(first.iter().all(|r| !r.as_ref().unwrap().1.replayed));
///
/// // The same run again: every answer comes from the journal, without a call.
/// let again: Vec<_> = docs.par_iter().claude_map(&session, |d| *d).with_journal(&journal).collect();
/// assert!(again.iter().all(|r| r.as_ref().unwrap().1.replayed));
/// assert_eq!(session.stats().replayed, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    answers: Mutex<HashMap<Key, Response>>,
    /// Batch submissions whose results are not all read yet, oldest first.
    batches: Mutex<Vec<JournaledBatch>>,
    /// Every batch id the journal has recorded, done or not: a batch found by its size is
    /// never one of these.
    batch_ids: Mutex<HashSet<String>>,
    /// Submissions a run of this program is submitting or reading now: another run does not
    /// take them up.
    claimed: Mutex<HashSet<String>>,
    /// Owns the locked file: the lock goes when it is closed.
    writer: GroupCommit,
    /// Records skipped at open because their checksum failed (a damaged line).
    damaged: usize,
    /// This program's note that the file is open; dropped after `writer`, so after the file
    /// is closed.
    _open_here: OpenHere,
}

impl Journal {
    /// Open the journal at `path`, creating it (and its folder) if needed, and load its
    /// answers.
    ///
    /// # Errors
    ///
    /// [`Error::JournalLocked`] if another program (or another `Journal` in this one) has it
    /// open, by any path; [`Error::Journal`] if it cannot be read or written, is not a
    /// journal, is a symbolic link, or was written by a version whose keys could be forged.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, Journal};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let journal = Journal::open(dir.path().join("answers.jsonl"))?;
    /// assert!(journal.is_empty());
    /// // The same file twice at once would interleave records: refused.
    /// assert!(matches!(Journal::open(journal.path()), Err(Error::JournalLocked { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Journal, Error> {
        let path = path.as_ref().to_path_buf();
        let fail = |message: String| Error::Journal {
            path: path.clone(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create its folder: {e}")))?;
        }
        // Never through a symbolic link at its own path: a link planted there (dangling
        // included) would have this program create or write a file wherever it points.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => fail(
                    "it is a symbolic link, which a journal is never opened through; give the \
                     path of the file itself"
                        .into(),
                ),
                _ => fail(format!("cannot open it: {e}")),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot read its metadata: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(fail("it is not a regular file".into()));
        }
        let open_here = lock(&file, (meta.dev(), meta.ino()), &path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        let loaded = load(&bytes).map_err(fail)?;
        if loaded.keep < bytes.len() {
            // A torn last line (the program died while writing it): cut it off, so that the
            // next record starts on a line of its own.
            log::warn!(
                "journal {}: a torn last record ({} bytes) was dropped",
                path.display(),
                bytes.len() - loaded.keep
            );
            file.set_len(loaded.keep as u64)
                .map_err(|e| fail(format!("cannot cut its torn end: {e}")))?;
        }
        if loaded.keep == 0 {
            file.write_all(format!("{HEADER}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| fail(format!("cannot write its header: {e}")))?;
            // A new file's name must outlive a power cut too, not only its contents.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(dir) = File::open(dir) {
                    let _ = dir.sync_all();
                }
            }
        }
        if loaded.damaged > 0 {
            log::warn!(
                "journal {}: {} damaged record(s) skipped; those items will be asked again",
                path.display(),
                loaded.damaged
            );
        }
        Ok(Journal {
            inner: Arc::new(Inner {
                writer: GroupCommit::new(file),
                answers: Mutex::new(loaded.answers),
                batches: Mutex::new(loaded.batches),
                batch_ids: Mutex::new(loaded.batch_ids),
                claimed: Mutex::new(HashSet::new()),
                damaged: loaded.damaged,
                path,
                _open_here: open_here,
            }),
        })
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many answers it holds (each item's latest).
    pub fn len(&self) -> usize {
        self.inner.answers.lock().len()
    }

    /// Whether it holds no answer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it has an answer for `key`.
    pub(crate) fn has(&self, key: Key) -> bool {
        self.inner.answers.lock().contains_key(&key)
    }

    /// The stored answer for `key`, marked as replayed.
    pub(crate) fn replay(&self, key: Key) -> Option<Response> {
        let mut response = self.inner.answers.lock().get(&key)?.clone();
        response.replayed = true;
        Some(response)
    }

    /// Write many items' outcomes durably with one write and one sync (the results of a
    /// batch, read together), as [`record`](Self::record) does each.
    pub(crate) fn record_all(&self, outcomes: &[(Key, Result<&Response, &Error>)]) {
        if outcomes.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        for (key, outcome) in outcomes {
            lines.extend(format::encode(&Self::record_of(*key, *outcome)));
        }
        if let Err(error) = self.inner.writer.append(&lines) {
            log::error!(
                "journal {}: {} answers could not be written ({error}); a rerun will ask for them again",
                self.inner.path.display(),
                outcomes.len()
            );
        }
        let mut answers = self.inner.answers.lock();
        for (key, outcome) in outcomes {
            if let Ok(response) = outcome {
                answers.insert(*key, (*response).clone());
            }
        }
    }

    fn record_of(key: Key, outcome: Result<&Response, &Error>) -> Record {
        match outcome {
            Ok(response) => Record {
                key: key.to_hex(),
                answer: Some(format::StoredAnswer::from(response)),
                ..Record::default()
            },
            Err(error) => Record {
                key: key.to_hex(),
                error: Some(error.to_string()),
                ..Record::default()
            },
        }
    }

    /// Write an item's outcome durably (an answer is also kept for replay). A write that
    /// fails is logged: the answer still goes to the caller, who paid for it.
    pub(crate) fn record(&self, key: Key, outcome: Result<&Response, &Error>) {
        let record = Self::record_of(key, outcome);
        if let Err(error) = self.inner.writer.append(&format::encode(&record)) {
            log::error!(
                "journal {}: an answer could not be written ({error}); a rerun will ask for it again",
                self.inner.path.display()
            );
        }
        if let Ok(response) = outcome {
            self.inner.answers.lock().insert(key, response.clone());
        }
    }
}

/// A batch submission the journal knows of whose results are not all read yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournaledBatch {
    /// This program's name for the submission.
    pub submission: String,
    /// Seconds since the UNIX epoch a little before its creation was asked.
    pub since: u64,
    /// What it holds.
    pub custom_ids: Vec<String>,
    /// The API's id, once it was read; `None`: the creation may or may not have happened.
    pub id: Option<String>,
}

impl Journal {
    /// Batch submissions whose results are not all read yet and that no run of this
    /// program holds, oldest first.
    pub(crate) fn open_batches(&self) -> Vec<JournaledBatch> {
        let claimed = self.inner.claimed.lock();
        self.inner
            .batches
            .lock()
            .iter()
            .filter(|b| !claimed.contains(&b.submission))
            .cloned()
            .collect()
    }

    /// Take up the submission for a run: false if another run of this program holds it.
    pub(crate) fn claim_batch(&self, submission: &str) -> bool {
        self.inner.claimed.lock().insert(submission.to_owned())
    }

    /// The run that held these submissions has ended: a later run may take up what is left
    /// of them.
    pub(crate) fn release_batches(&self, submissions: &[String]) {
        let mut claimed = self.inner.claimed.lock();
        for submission in submissions {
            claimed.remove(submission);
        }
    }

    /// Every batch id the journal has recorded.
    pub(crate) fn batch_ids(&self) -> HashSet<String> {
        self.inner.batch_ids.lock().clone()
    }

    /// Write, durably, that the batch named `submission` holding `custom_ids` is about to be
    /// created: written before the creation is asked, so that a program killed at any point
    /// after finds it again. `since`: seconds since the UNIX epoch a little before now.
    pub(crate) fn batch_intent(
        &self,
        submission: &str,
        since: u64,
        custom_ids: &[String],
    ) -> Result<(), Error> {
        self.write_batch_note(BatchNote {
            submission: submission.into(),
            since: Some(since),
            custom_ids: custom_ids.to_vec(),
            ..BatchNote::default()
        })?;
        self.inner.claimed.lock().insert(submission.into());
        self.inner.batches.lock().push(JournaledBatch {
            submission: submission.into(),
            since,
            custom_ids: custom_ids.to_vec(),
            id: None,
        });
        Ok(())
    }

    /// Write, durably, the API's id of the batch named `submission`.
    pub(crate) fn batch_created(&self, submission: &str, id: &str) -> Result<(), Error> {
        self.write_batch_note(BatchNote {
            submission: submission.into(),
            id: Some(id.into()),
            ..BatchNote::default()
        })?;
        self.inner.batch_ids.lock().insert(id.into());
        if let Some(batch) = self
            .inner
            .batches
            .lock()
            .iter_mut()
            .find(|b| b.submission == submission)
        {
            batch.id = Some(id.into());
        }
        Ok(())
    }

    /// Write that every result of the batch named `submission` was read and recorded (or
    /// that it was never created): a rerun no longer looks at it.
    pub(crate) fn batch_done(&self, submission: &str) -> Result<(), Error> {
        self.write_batch_note(BatchNote {
            submission: submission.into(),
            done: true,
            ..BatchNote::default()
        })?;
        self.inner
            .batches
            .lock()
            .retain(|b| b.submission != submission);
        Ok(())
    }

    fn write_batch_note(&self, note: BatchNote) -> Result<(), Error> {
        let record = Record {
            batch: Some(note),
            ..Record::default()
        };
        self.inner
            .writer
            .append(&format::encode(&record))
            .map_err(|message| Error::Journal {
                path: self.inner.path.clone(),
                message: format!("a batch submission could not be recorded: {message}"),
            })
    }
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.inner.path)
            .field("answers", &self.len())
            .field("damaged", &self.inner.damaged)
            .finish()
    }
}

/// What a journal file holds.
struct Loaded {
    answers: HashMap<Key, Response>,
    batches: Vec<JournaledBatch>,
    batch_ids: HashSet<String>,
    /// How many bytes to keep: everything up to the end of the last whole line.
    keep: usize,
    damaged: usize,
}

fn load(bytes: &[u8]) -> Result<Loaded, String> {
    let mut answers = HashMap::new();
    let mut damaged = 0;
    // Only lines ended by a newline are whole; what follows the last one is torn.
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let not_a_journal =
        || format!("it is not a claude-rayon journal (its first line is not {HEADER})");
    if bytes.starts_with(format!("{HEADER_V1}\n").as_bytes()) {
        // Its keys (FNV-1a) can be made to collide on purpose, and its prompts are not kept,
        // so its answers can neither be trusted for replay nor re-keyed. Refused, untouched.
        return Err(format!(
            "it was written by an earlier claude-rayon (first line {HEADER_V1}) whose keys could \
             be forged, so its answers are not replayed; move it aside (it stays readable with \
             jq) and a new journal is started at this path"
        ));
    }
    if keep == 0 && !format!("{HEADER}\n").as_bytes().starts_with(bytes) {
        // Not even a torn header: someone else's file, which must not be cut.
        return Err(not_a_journal());
    }
    let mut lines = bytes[..keep].split(|b| *b == b'\n');
    if keep > 0 {
        let header = lines.next().unwrap_or_default();
        if header != HEADER.as_bytes() {
            return Err(not_a_journal());
        }
    }
    let mut batches: Vec<JournaledBatch> = Vec::new();
    let mut batch_ids = HashSet::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let record = format::decode(line);
        if let Some(note) = record.as_ref().and_then(|r| r.batch.as_ref()) {
            batch_ids.extend(note.id.clone());
            take_batch_note(&mut batches, note);
            continue;
        }
        match record.and_then(|r| Some((Key::from_hex(&r.key)?, r))) {
            // A failure recorded after an answer of the same item does not undo the answer.
            Some((key, record)) => {
                if let Some(answer) = record.answer {
                    answers.insert(key, answer.into_response());
                }
            }
            None => damaged += 1,
        }
    }
    Ok(Loaded {
        answers,
        batches,
        batch_ids,
        keep,
        damaged,
    })
}

/// Fold one step of a batch submission's life into the open ones.
fn take_batch_note(batches: &mut Vec<JournaledBatch>, note: &BatchNote) {
    if note.done {
        batches.retain(|b| b.submission != note.submission);
    } else if let Some(since) = note.since {
        batches.push(JournaledBatch {
            submission: note.submission.clone(),
            since,
            custom_ids: note.custom_ids.clone(),
            id: note.id.clone(),
        });
    } else if let Some(id) = &note.id {
        if let Some(batch) = batches.iter_mut().find(|b| b.submission == note.submission) {
            batch.id = Some(id.clone());
        }
    }
}

/// Journals open in this program, by device and inode: a second `Journal::open` of one file
/// (by any path) is refused at once, without trying its lock.
static OPEN_HERE: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// How long a lock held by someone else is tried again before the file counts as in use:
/// a child this program forks (a CLI process starting) holds a copy of every descriptor
/// until its `exec` closes them, a moment at most.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);

/// A journal's entry in [`OPEN_HERE`], removed when dropped.
struct OpenHere((u64, u64));

impl Drop for OpenHere {
    fn drop(&mut self) {
        OPEN_HERE.lock().retain(|id| *id != self.0);
    }
}

/// Lock the journal file `file` (device and inode `id`) for writing, without waiting for
/// another program.
///
/// The lock is on the file itself, so every path to it (a hard link, a linked folder) meets
/// it, and it belongs to this open file, not to the process: on Linux an open file
/// description lock (`F_OFD_SETLK`), elsewhere `flock`. So closing some other descriptor of
/// the file (the program reading its own journal) does not release it, a second open in this
/// program conflicts like another program's, and the kernel drops it with the program,
/// however the program ends.
fn lock(file: &File, id: (u64, u64), path: &Path) -> Result<OpenHere, Error> {
    let locked = || Error::JournalLocked {
        path: path.to_path_buf(),
    };
    {
        let mut open_here = OPEN_HERE.lock();
        if open_here.contains(&id) {
            return Err(locked());
        }
        open_here.push(id);
    }
    // From here on, dropping the entry takes the file off the list again on every path.
    let entry = OpenHere(id);
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match try_lock(file) {
            Ok(()) => return Ok(entry),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EAGAIN)) => {
                if Instant::now() >= deadline {
                    return Err(locked());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(Error::Journal {
                    path: path.to_path_buf(),
                    message: format!("cannot lock it: {e}"),
                })
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn try_lock(file: &File) -> std::io::Result<()> {
    // SAFETY: a zeroed `flock` is a valid value of this plain C struct (l_pid must be 0 for
    // an OFD lock); fcntl reads it.
    let mut whole: libc::flock = unsafe { std::mem::zeroed() };
    whole.l_type = libc::F_WRLCK as libc::c_short;
    whole.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor we own, with a pointer to a struct we own.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &whole) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn try_lock(file: &File) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
        0 => Ok(()),
        _ => {
            let error = std::io::Error::last_os_error();
            // flock says EWOULDBLOCK, which is EAGAIN where it matters.
            Err(match error.raw_os_error() {
                Some(libc::EWOULDBLOCK) => std::io::Error::from_raw_os_error(libc::EAGAIN),
                _ => error,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> Key {
        Key::of("test", &n.to_string())
    }

    fn answer(text: &str) -> Response {
        Response {
            text: text.into(),
            cost_usd: 0.5,
            ..Response::default()
        }
    }

    #[test]
    fn answers_survive_a_reopen_and_failures_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let journal = Journal::open(&path).unwrap();
        journal.record(key(1), Ok(&answer("one")));
        journal.record(key(2), Err(&Error::Cancelled));
        drop(journal);
        let journal = Journal::open(&path).unwrap();
        let replayed = journal.replay(key(1)).unwrap();
        assert_eq!((replayed.text.as_str(), replayed.replayed), ("one", true));
        assert_eq!(replayed.cost_usd, 0.5, "the cost it had when it was paid");
        assert!(journal.replay(key(2)).is_none());
        assert_eq!(journal.len(), 1);
    }

    #[test]
    fn a_batch_submission_is_open_from_its_intent_until_it_is_done_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let ids = |n: std::ops::Range<usize>| n.map(|i| key(i).to_hex()).collect::<Vec<_>>();
        let journal = Journal::open(&path).unwrap();
        journal
            .batch_intent("s1", 1_764_770_000, &ids(0..3))
            .unwrap();
        journal.batch_created("s1", "msgbatch_a").unwrap();
        journal
            .batch_intent("s2", 1_764_770_100, &ids(3..5))
            .unwrap();
        journal.record(key(0), Ok(&answer("zero")));
        drop(journal);
        let journal = Journal::open(&path).unwrap();
        let open = journal.open_batches();
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].id.as_deref(), Some("msgbatch_a"));
        assert_eq!(open[0].custom_ids, ids(0..3));
        assert_eq!(
            (open[1].id.as_deref(), open[1].since),
            (None, 1_764_770_100)
        );
        assert_eq!(journal.len(), 1, "a batch record is not an answer");
        journal.batch_done("s1").unwrap();
        drop(journal);
        let journal = Journal::open(&path).unwrap();
        let open = journal.open_batches();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].submission, "s2");
        assert!(journal.replay(key(0)).is_some());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let first = Journal::open(&path).unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(Error::JournalLocked { .. })
        ));
        // A clone shares it.
        first.clone().record(key(7), Ok(&answer("x")));
        drop(first);
        assert!(Journal::open(&path).unwrap().replay(key(7)).is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// A `kill -9` at any moment leaves the file cut at some byte: a reopen loads exactly
        /// the records wholly written before it, never a part of one, and the journal goes on.
        #[test]
        fn a_kill_at_any_byte_loses_only_what_was_not_written(
            n in 1usize..12,
            at in 0.0f64..=1.0,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("j.jsonl");
            let journal = Journal::open(&path).unwrap();
            for i in 0..n {
                journal.record(key(i), Ok(&answer(&format!("answer {i} {}", "x".repeat(i * 7)))));
            }
            drop(journal);
            let bytes = std::fs::read(&path).unwrap();
            let cut = ((bytes.len() as f64) * at) as usize;
            std::fs::write(&path, &bytes[..cut]).unwrap();
            // The records whose line (newline included) ends at or before the cut.
            let ends: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1).collect();
            let whole = ends.iter().skip(1).filter(|end| **end <= cut).count();

            let journal = Journal::open(&path).unwrap();
            proptest::prop_assert_eq!(journal.len(), whole);
            for i in 0..n {
                let replayed = journal.replay(key(i));
                proptest::prop_assert_eq!(replayed.is_some(), i < whole, "record {}", i);
                if let Some(response) = replayed {
                    let expected = format!("answer {i} ");
                    proptest::prop_assert!(response.text.starts_with(&expected));
                }
            }
            journal.record(key(99), Ok(&answer("after the crash")));
            drop(journal);
            let journal = Journal::open(&path).unwrap();
            proptest::prop_assert_eq!(journal.len(), whole + 1);
            proptest::prop_assert_eq!(journal.replay(key(99)).unwrap().text, "after the crash");
        }
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "my precious notes\n").unwrap();
        assert!(matches!(Journal::open(&path), Err(Error::Journal { .. })));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "my precious notes\n"
        );
    }

    #[test]
    fn a_journal_with_forgeable_keys_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.jsonl");
        let old = format!(
            "{HEADER_V1}\n{{\"crc\":\"00000000\",\"r\":{{\"key\":\"{:032x}\"}}}}\n{{\"torn",
            7
        );
        std::fs::write(&path, &old).unwrap();
        let error = Journal::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("earlier claude-rayon") && error.contains("move it aside"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            old,
            "not even its torn end cut"
        );
        // Moved aside, a new journal starts at the path.
        std::fs::rename(&path, dir.path().join("old.v1.jsonl")).unwrap();
        assert!(Journal::open(&path).unwrap().is_empty());
    }
}
