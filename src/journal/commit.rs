//! Group commit: every writer appends its line and waits until it is on disk; whoever finds
//! no write in progress writes and syncs everything pending at once, so at 20 items a second
//! and more, many items share one `fsync`.

use std::fs::File;
use std::io::Write;

use parking_lot::{Condvar, Mutex};

pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    file: Mutex<File>,
}

#[derive(Default)]
struct State {
    /// Lines appended and not yet taken by a writer.
    pending: Vec<u8>,
    /// Lines appended so far, and lines on disk so far.
    appended: u64,
    durable: u64,
    /// Whether a writer is writing and syncing now.
    writing: bool,
    /// The last write's failure, for the lines it carried (`failed_from..failed_to`).
    failure: Option<(u64, u64, String)>,
}

impl GroupCommit {
    pub(crate) fn new(file: File) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            file: Mutex::new(file),
        }
    }

    /// Append `line` and return once it is on disk (or its write failed).
    pub(crate) fn append(&self, line: &[u8]) -> Result<(), String> {
        let mut state = self.state.lock();
        state.pending.extend_from_slice(line);
        state.appended += 1;
        let mine = state.appended;
        loop {
            if state.durable >= mine {
                return match &state.failure {
                    Some((from, to, error)) if (*from..*to).contains(&mine) => Err(error.clone()),
                    _ => Ok(()),
                };
            }
            if state.writing {
                self.done.wait(&mut state);
                continue;
            }
            // Nobody is writing: write everything pending, ours included.
            state.writing = true;
            let batch = std::mem::take(&mut state.pending);
            let (from, to) = (state.durable + 1, state.appended + 1);
            drop(state);
            let written = {
                let mut file = self.file.lock();
                file.write_all(&batch).and_then(|()| file.sync_data())
            };
            state = self.state.lock();
            state.writing = false;
            state.durable = to - 1;
            if let Err(error) = written {
                state.failure = Some((from, to, error.to_string()));
            }
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_line_of_many_writers_lands_once_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let commit = Arc::new(GroupCommit::new(file));
        std::thread::scope(|s| {
            for writer in 0..8 {
                let commit = Arc::clone(&commit);
                s.spawn(move || {
                    for i in 0..50 {
                        commit.append(format!("{writer}-{i}\n").as_bytes()).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 400);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 400, "no line twice, none lost");
    }
}
