//! Items answered through a batch backend (the Message Batches API): the same life as
//! `life.rs` (stop check, prompt, journal replay, the policy's judgement and its one
//! re-prompt, retries under the retry policy, the journal's record, counts, progress), driven
//! round by round instead of one call at a time: every item's next request goes out in one
//! submission, the results come back together, and what still needs an ask (a retry, the
//! policy's re-prompt) goes out in a follow-up batch.
//!
//! The journal records each batch before it is created (its requests' `custom_id`s), its id
//! once the API gave it, and the results as they are read; a rerun polls the batches already
//! submitted, replays what was answered and submits only the items in no batch. A request's
//! `custom_id` is its journal key in hex: deterministic (a rerun finds its item in an old
//! batch), always of the API's alphabet and length (64 hex digits), and one per distinct
//! prompt (items with the same prompt share one request: a duplicate id would reject the
//! whole batch).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::attempt::{ConnSource, SessionWorld};
use super::life::{self, Answer, Ask, Event, Judged, Policy, World};
use super::Run;
use crate::admission::Reservation;
use crate::backend::batch::{
    BatchApi, BatchItemResult, BatchRequest, BatchState, BatchStatus, MAX_BATCH_BYTES,
};
use crate::backend::Billed;
use crate::journal::format::Key;
use crate::progress::BatchProgress;
use crate::session::builder::MAX_BATCH_POLL_INTERVAL;
use crate::session::BatchCancel;
use crate::{Error, Failed, Journal, Response};

/// How long a cancel waits for the batches it cancelled to end, so their answers are kept:
/// the API usually ends a cancelled batch within seconds. Past it, the run returns and the
/// batches stay in the journal for a rerun.
const CANCEL_SETTLE: Duration = Duration::from_secs(30);

/// How often a cancelled batch is looked at while it settles.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// How much earlier than the creation a batch's intent says it was asked: the API's clock
/// may be behind this machine's.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Results written to the journal together (one write and one sync).
const RECORD_CHUNK: usize = 1_000;

/// One distinct prompt of the run, and the items waiting for its answer.
struct Job<'r> {
    /// The item's own prompt (the strict policy's re-prompt quotes it).
    prompt: String,
    /// What the first ask sends (the journal's key), when the policy makes it other than
    /// the prompt (the strict policy's instruction); else the prompt is. One copy of each
    /// prompt, not two: a run holds 100,000 of them until their batch is created.
    first_ask: Option<String>,
    /// The re-prompt, once the policy asked for one.
    again: Option<String>,
    /// The `custom_id` of the request now due or in flight.
    custom_id: String,
    /// Tries of the current ask, counting towards the retry policy.
    tries: u32,
    /// Calls made for the item (answered or errored requests).
    calls: u32,
    /// The last failed try's error, kept if a stop ends the retries.
    last: Option<Error>,
    reservation: Option<Reservation<'r>>,
    /// The batch (index into the run's) its request is in.
    in_batch: Option<usize>,
    outcome: Option<Result<Answer, (Error, u32)>>,
    /// The run's items (their indices) this prompt answers.
    items: Vec<usize>,
}

impl Job<'_> {
    /// What the first ask sends: the journal's key.
    fn asked(&self) -> &str {
        self.first_ask.as_deref().unwrap_or(&self.prompt)
    }

    fn sending(&self) -> &str {
        self.again.as_deref().unwrap_or(self.asked())
    }

    fn ask(&self) -> Ask {
        if self.again.is_some() {
            Ask::Second
        } else {
            Ask::First
        }
    }

    fn is_due(&self) -> bool {
        self.outcome.is_none() && self.in_batch.is_none()
    }
}

/// A batch of this run: submitted now, or found in the journal.
struct RunBatch {
    submission: String,
    state: BatchState,
    /// Its requests' jobs, by `custom_id`.
    jobs: HashMap<String, usize>,
    /// Every result read and recorded.
    read: bool,
    /// When this run submitted it or took it up: an answer's latency is counted from here.
    since: Instant,
    /// An earlier run submitted it.
    adopted: bool,
}

/// Items on their way through batches.
struct Batched<'r> {
    run: &'r Run,
    api: &'r dyn BatchApi,
    world: SessionWorld<'r>,
    policy: &'r Policy<'r>,
    settings: String,
    journal: Option<&'r Journal>,
    jobs: Vec<Job<'r>>,
    batches: Vec<RunBatch>,
    /// The journal's submissions this run holds (so another run of the program does not
    /// take them up), given back when it ends.
    owned: Vec<String>,
    /// Every batch id known to be some submission's, never one found by its size.
    known_ids: HashSet<String>,
}

impl Drop for Batched<'_> {
    fn drop(&mut self) {
        if let Some(journal) = self.journal {
            journal.release_batches(&self.owned);
        }
    }
}

/// Answer `items` in batches; results in input order, as [`Run::item`] gives each.
pub(super) fn answer<T, F, P>(
    run: &Run,
    api: &dyn BatchApi,
    items: Vec<T>,
    prompt_fn: &F,
    policy: &Policy<'_>,
) -> Vec<Result<(T, Answer), Failed<T>>>
where
    T: Send,
    F: Fn(&T) -> P + Sync,
    P: AsRef<str>,
{
    let world = run.world(ConnSource::Backend);
    let settings = match run.session().answer_settings() {
        Ok(settings) => settings.clone(),
        Err(why) => {
            let error = Error::InvalidConfig(format!("the answer settings are unknown: {why}"));
            return items
                .into_iter()
                .map(|item| Err(life::not_started(&world, item, error.clone())))
                .collect();
        }
    };
    // The prompts, built on the session's threads (a prompt closure may read a file); a
    // panic in one fails its item only.
    let (items, prompts): (Vec<T>, Vec<Result<String, Error>>) = run.on_threads(|| {
        items
            .into_par_iter()
            .map(|item| {
                let prompt =
                    catch_unwind(AssertUnwindSafe(|| prompt_fn(&item).as_ref().to_owned()))
                        .map_err(|panic| Error::Panicked(life::panic_message(panic.as_ref())));
                (item, prompt)
            })
            .unzip()
    });
    let mut batched = Batched {
        run,
        api,
        world,
        policy,
        settings,
        journal: run.journal.as_ref(),
        jobs: Vec::new(),
        batches: Vec::new(),
        owned: Vec::new(),
        known_ids: run
            .journal
            .as_ref()
            .map(Journal::batch_ids)
            .unwrap_or_default(),
    };
    let mut done: Vec<Option<Result<Answer, (Error, u32)>>> = Vec::with_capacity(items.len());
    // By the first ask's key, which is its `custom_id`: the one thing that must not repeat
    // in a batch, and 32 bytes where the ask itself may be kilobytes.
    let mut by_key: HashMap<Key, usize> = HashMap::new();
    for (index, prompt) in prompts.into_iter().enumerate() {
        done.push(batched.take_item(index, prompt, &mut by_key));
    }
    drop(by_key);
    batched.run_rounds();
    // Every job has its outcome now: hand it to each of its items.
    let world = run.world(ConnSource::Backend);
    for job in std::mem::take(&mut batched.jobs) {
        let outcome = job.outcome.expect("every job ends with an outcome");
        for &index in &job.items {
            done[index] = Some(outcome.as_ref().map(clone_answer).map_err(Clone::clone));
        }
    }
    items
        .into_iter()
        .zip(done)
        .map(|(item, outcome)| {
            life::finished(&world, item, outcome.expect("every item has an outcome"))
        })
        .collect()
}

fn clone_answer(answer: &Answer) -> Answer {
    Answer {
        response: answer.response.clone(),
        choice: answer.choice,
        attempts: answer.attempts,
    }
}

/// Whether a failed creation certainly created nothing: the API answered with a client
/// error (a 4xx, a rejected batch). Without an answer, or with a server's (a gateway's 502
/// may follow a creation that went through), it may have.
fn create_failed_for_sure(error: &Error) -> bool {
    matches!(error, Error::BatchRejected { .. })
        || error
            .api_status()
            .is_some_and(|status| (400..500).contains(&status))
}

/// Whether a look at a batch failed because the batch cannot be read at all, now or later:
/// a client error that asking again cannot mend (not a timeout, a conflict or a rate limit).
fn is_gone(error: &Error) -> bool {
    error
        .api_status()
        .is_some_and(|status| (400..500).contains(&status))
        && !error.is_retryable()
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A name for a submission, unique among this program's and others' (time, process, count).
fn submission_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "s{nanos:x}-{:x}-{:x}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

impl<'r> Batched<'r> {
    /// An item of the run: its outcome now (no prompt, a blank one, a stop, an answer from
    /// the journal), or `None` and it waits for its job.
    fn take_item(
        &mut self,
        index: usize,
        prompt: Result<String, Error>,
        by_key: &mut HashMap<Key, usize>,
    ) -> Option<Result<Answer, (Error, u32)>> {
        let world = &self.world;
        // As `life::live`: a spent budget still lets an answer come from the journal.
        let stopped = world
            .stop_reason()
            .filter(|reason| !matches!(reason, Error::BudgetExceeded { .. }));
        world.note(Event::Started, None);
        let prompt = match (stopped, prompt) {
            (Some(reason), _) | (None, Err(reason)) => return Some(Err((reason, 0))),
            (None, Ok(prompt)) => prompt,
        };
        if life::is_blank(&prompt) {
            return Some(Err((Error::EmptyPrompt, 0)));
        }
        let asked = life::first_ask(self.policy, &prompt);
        let key = Key::of(&self.settings, &asked);
        if let Some(&job) = by_key.get(&key) {
            self.jobs[job].items.push(index);
            return None;
        }
        match world.replay(&asked) {
            Err(error) => return Some(Err((error, 0))),
            Ok(Some(response)) => {
                let (choice, fits) = life::replay_fits(self.policy, &response);
                if fits {
                    world.note(Event::Replayed, None);
                    return Some(Ok(Answer {
                        response,
                        choice,
                        attempts: 0,
                    }));
                }
            }
            Ok(None) => {}
        }
        let first_ask = match asked {
            Cow::Owned(asked) => Some(asked),
            Cow::Borrowed(_) => None,
        };
        by_key.insert(key, self.jobs.len());
        self.jobs.push(Job {
            prompt,
            first_ask,
            again: None,
            custom_id: key.to_hex(),
            tries: 0,
            calls: 0,
            last: None,
            reservation: None,
            in_batch: None,
            outcome: None,
            items: vec![index],
        });
        None
    }

    /// Why no further request may go out: a stop, a close, a fatal error; a spent budget
    /// only refuses new reservations.
    fn stop_reason(&self) -> Option<Error> {
        self.world
            .stop_reason()
            .filter(|reason| !matches!(reason, Error::BudgetExceeded { .. }))
    }

    fn run_rounds(&mut self) {
        self.adopt_journaled();
        if self.jobs.iter().any(Job::is_due) {
            self.warm_the_cache();
        }
        let settings = self.run.session().config().batches;
        let mut interval = settings.poll_interval;
        let longest = settings.poll_interval.max(MAX_BATCH_POLL_INTERVAL);
        loop {
            if let Some(reason) = self.stop_reason() {
                self.stop(reason, settings.on_cancel);
                return;
            }
            if self.jobs.iter().any(Job::is_due) {
                self.submit_due();
                interval = settings.poll_interval;
                continue;
            }
            if self.batches.iter().all(|b| b.read) {
                return;
            }
            if self.look(false) {
                // Results came: what they leave to ask goes out at once.
                continue;
            }
            self.world.wait(interval);
            interval = interval.mul_f64(1.5).min(longest);
        }
    }

    /// Pick up the batches the journal says an earlier run submitted for prompts of this
    /// one: their answers are paid for, so they are read, not asked again.
    fn adopt_journaled(&mut self) {
        let Some(journal) = self.journal else {
            return;
        };
        let open = journal.open_batches();
        if open.is_empty() {
            return;
        }
        let due: HashMap<String, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, job)| (job.custom_id.clone(), i))
            .collect();
        for batch in open {
            let mine: HashMap<String, usize> = batch
                .custom_ids
                .iter()
                .filter_map(|id| due.get(id).map(|&job| (id.clone(), job)))
                .filter(|(_, job)| self.jobs[*job].in_batch.is_none())
                .collect();
            if mine.is_empty() || !journal.claim_batch(&batch.submission) {
                continue;
            }
            self.owned.push(batch.submission.clone());
            let id = match batch.id {
                Some(id) => id,
                None => match self.find_created(batch.since, batch.custom_ids.len()) {
                    Ok(Some(id)) => {
                        let _ = journal.batch_created(&batch.submission, &id);
                        id
                    }
                    Ok(None) => {
                        // Never created: its items are asked in a batch of this run.
                        log::info!(
                            "batch submission {} of an earlier run was never created; its \
                             items are submitted again",
                            batch.submission
                        );
                        let _ = journal.batch_done(&batch.submission);
                        continue;
                    }
                    Err(error) => {
                        // Submitting them again could pay for them twice: they fail now,
                        // and the next rerun looks again.
                        log::warn!(
                            "cannot tell whether batch submission {} of an earlier run was \
                             created ({error}); its items fail now, a rerun looks again",
                            batch.submission
                        );
                        let ended: Vec<usize> = mine.values().copied().collect();
                        for &job in &ended {
                            self.end(job, Err(error.clone()));
                        }
                        self.record(&ended);
                        continue;
                    }
                },
            };
            self.known_ids.insert(id.clone());
            log::info!(
                "picking up batch {id} of an earlier run ({} of its {} requests are this run's)",
                mine.len(),
                batch.custom_ids.len()
            );
            let index = self.batches.len();
            for &job in mine.values() {
                let job = &mut self.jobs[job];
                job.in_batch = Some(index);
                job.tries += 1;
                job.reservation = self
                    .run
                    .session()
                    .admission()
                    .reserve_batched(job.asked())
                    .ok();
            }
            self.batches.push(RunBatch {
                submission: batch.submission,
                state: BatchState {
                    id,
                    status: BatchStatus::InProgress,
                    counts: Default::default(),
                    created_at: None,
                },
                jobs: mine,
                read: false,
                since: Instant::now(),
                adopted: true,
            });
        }
    }

    /// The batch an intent created, if the API lists one: created since the intent, of its
    /// size, and no batch the journal or this run knows as another submission's. `Ok(None)`
    /// when there is none (it was not created).
    fn find_created(&self, since: u64, requests: usize) -> Result<Option<String>, Error> {
        let since = UNIX_EPOCH + Duration::from_secs(since);
        let listed = self.api.list_since(since)?;
        // Oldest first: intents are written in order.
        Ok(listed
            .into_iter()
            .rev()
            .find(|b| b.total() == requests as u64 && !self.known_ids.contains(&b.id))
            .map(|b| b.id))
    }

    /// When the session's shared prefix is worth caching, one item is answered through the
    /// Messages API first: its request writes the prefix (with the 1-hour cache) and the
    /// batch's requests read it, as the API's documentation advises for batches.
    fn warm_the_cache(&mut self) {
        let session = self.run.session();
        if !session.admission().warms_cache() {
            return;
        }
        let Some(first) = self.jobs.iter().position(Job::is_due) else {
            return;
        };
        if self.jobs.iter().filter(|j| j.is_due()).count() < 2 {
            return;
        }
        let sending = self.jobs[first].sending().to_owned();
        let outcome = life::attempts(&self.world, &sending);
        let (outcome, calls) = match outcome {
            Ok((response, calls)) => (Ok(response), calls),
            Err((error, calls)) => (Err(error), calls),
        };
        let job = &mut self.jobs[first];
        job.calls += calls;
        // Its tries count: a failure the retry policy has given up on is not sent again.
        job.tries = calls;
        if let Some(ended) = self.judge(first, outcome, false) {
            self.record(&[ended]);
        }
    }

    /// Submit every due job's next request, in batches of at most the session's
    /// `max_batch_requests` and the API's 256 MB.
    fn submit_due(&mut self) {
        let session = self.run.session();
        let mut due = Vec::new();
        let mut refused = Vec::new();
        for index in 0..self.jobs.len() {
            if !self.jobs[index].is_due() {
                continue;
            }
            let job = &self.jobs[index];
            match session.admission().reserve_batched(job.sending()) {
                Ok(reservation) => {
                    if job.tries > 0 {
                        self.world.note(Event::Retried, None);
                    }
                    self.jobs[index].reservation = Some(reservation);
                    due.push(index);
                }
                Err(error) => {
                    if error.is_fatal() {
                        self.world.fail_fatally(&error);
                    }
                    self.end(index, Err(error));
                    refused.push(index);
                }
            }
        }
        self.record(&refused);
        if due.is_empty() {
            return;
        }
        // The bodies, built on the session's threads.
        let api = self.api;
        let requests: Vec<BatchRequest> = {
            let jobs = &self.jobs;
            self.run.on_threads(|| {
                due.par_iter()
                    .map(|&index| BatchRequest {
                        custom_id: jobs[index].custom_id.clone(),
                        params: api.params(jobs[index].sending()),
                    })
                    .collect()
            })
        };
        let max_requests = session.config().batches.max_requests;
        let mut chunks = Vec::new();
        let mut chunk: Vec<(usize, BatchRequest)> = Vec::new();
        let mut bytes = 0;
        for (index, request) in due.into_iter().zip(requests) {
            let size = request.params.len() + request.custom_id.len() + 40;
            if !chunk.is_empty() && (chunk.len() == max_requests || bytes + size > MAX_BATCH_BYTES)
            {
                chunks.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push((index, request));
        }
        chunks.push(chunk);
        for chunk in chunks {
            // A stop (a cancel, a fatal error) while earlier batches were created: no more
            // are; their items stay due, and the stop ends them.
            if self.stop_reason().is_some() {
                break;
            }
            self.submit(chunk);
        }
    }

    /// Submit one batch: its intent in the journal first, then the creation, then its id.
    fn submit(&mut self, chunk: Vec<(usize, BatchRequest)>) {
        let (indices, requests): (Vec<usize>, Vec<BatchRequest>) = chunk.into_iter().unzip();
        let submission = submission_name();
        let since = unix_seconds(SystemTime::now() - CLOCK_SLACK);
        if let Some(journal) = self.journal {
            let ids: Vec<String> = requests.iter().map(|r| r.custom_id.clone()).collect();
            if let Err(error) = journal.batch_intent(&submission, since, &ids) {
                // Unrecorded, a batch could be paid twice by a rerun: not submitted.
                for index in indices {
                    self.end(index, Err(error.clone()));
                }
                return;
            }
            self.owned.push(submission.clone());
        }
        for &index in &indices {
            self.jobs[index].tries += 1;
        }
        match self.create(&requests, since) {
            Ok(state) => {
                self.known_ids.insert(state.id.clone());
                if let Some(journal) = self.journal {
                    if let Err(error) = journal.batch_created(&submission, &state.id) {
                        log::error!("{error}; a rerun looks for batch {} by its size", state.id);
                    }
                }
                let counters = self.run.session().counters();
                crate::stats::add(&counters.batches, 1);
                for _ in &requests {
                    self.run.session().admission().count_batched_request();
                }
                log::info!(
                    "submitted batch {} of {} requests",
                    state.id,
                    requests.len()
                );
                let batch = self.batches.len();
                let mut jobs = HashMap::with_capacity(indices.len());
                for (index, request) in indices.into_iter().zip(requests) {
                    self.jobs[index].in_batch = Some(batch);
                    jobs.insert(request.custom_id, index);
                }
                self.batches.push(RunBatch {
                    submission,
                    state,
                    jobs,
                    read: false,
                    since: Instant::now(),
                    adopted: false,
                });
                self.report_progress();
            }
            Err(error) => {
                // `create` has tried again under the retry policy already: the items end
                // here. A client error says the batch was not created; otherwise it may have
                // been: its intent stays open for a rerun to look for, and what was reserved
                // counts as spent, since it may be billed.
                if error.is_fatal() {
                    self.world.fail_fatally(&error);
                }
                let not_created = create_failed_for_sure(&error);
                if not_created {
                    if let Some(journal) = self.journal {
                        let _ = journal.batch_done(&submission);
                    }
                } else {
                    log::warn!(
                        "a batch of {} requests may or may not have been created ({error}); \
                         its items fail now, and a rerun with the same journal finds the \
                         batch if it exists",
                        indices.len()
                    );
                    for &index in &indices {
                        if let Some(reservation) = self.jobs[index].reservation.take() {
                            reservation.keep();
                        }
                    }
                }
                for &index in &indices {
                    self.end(index, Err(error.clone()));
                }
                self.record(&indices);
            }
        }
    }

    /// Create a batch, trying again under the retry policy when the API could not be
    /// reached or was busy; before each new try, a batch the last try may have created
    /// unseen (its answer cut) is looked for, so none is created twice.
    fn create(&self, requests: &[BatchRequest], since: u64) -> Result<BatchState, Error> {
        let policy = &self.run.session().config().retry;
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match self.api.create(requests) {
                Ok(state) => return Ok(state),
                Err(error) => error,
            };
            if !policy.should_retry(&error, tries) {
                return Err(error);
            }
            log::warn!("creating a batch failed ({error}); trying again");
            if !self.world.wait(policy.backoff(tries)) {
                return Err(error);
            }
            // A failure with no answer, or a server's, may have created the batch: it is
            // looked for before another is made, and if the look fails, none is made.
            if !create_failed_for_sure(&error) {
                match self.find_created(since, requests.len()) {
                    Ok(Some(id)) => {
                        log::info!("batch {id} was created although its answer was lost");
                        return self.api.retrieve(&id);
                    }
                    Ok(None) => {}
                    Err(_) => return Err(error),
                }
            }
        }
    }

    /// Look at every batch not read yet, and read those that ended. With `settling` (a
    /// cancel), results are read but nothing more is judged as due. Returns whether any
    /// results were read.
    fn look(&mut self, settling: bool) -> bool {
        let mut read_any = false;
        for index in 0..self.batches.len() {
            if self.batches[index].read {
                continue;
            }
            // A stop ends the looks at once (the stop's own looks go on while they settle).
            if !settling && self.stop_reason().is_some() {
                break;
            }
            let outcome = match self.api.retrieve(&self.batches[index].state.id) {
                Ok(state) => {
                    self.batches[index].state = state;
                    if self.batches[index].state.status != BatchStatus::Ended {
                        continue;
                    }
                    self.read_results(index, settling).map(|()| read_any = true)
                }
                Err(error) => Err(error),
            };
            let Err(error) = outcome else {
                continue;
            };
            if error.is_fatal() {
                self.world.fail_fatally(&error);
            }
            if is_gone(&error) {
                self.give_up_batch(index, error);
                read_any = true;
            } else {
                log::warn!(
                    "cannot look at batch {} or read its results ({error}); trying again later",
                    self.batches[index].state.id
                );
            }
        }
        self.report_progress();
        read_any
    }

    /// The API says batch `index` cannot be read (not found, its results gone after 29
    /// days, another workspace's): it is closed in the journal, and its requests are asked
    /// again: at once for an earlier run's batch (no fault of this run's tries), under the
    /// retry policy for this run's own.
    fn give_up_batch(&mut self, index: usize, error: Error) {
        let id = self.batches[index].state.id.clone();
        log::warn!("batch {id} cannot be read ({error}); its requests are asked again");
        if let Some(journal) = self.journal {
            let _ = journal.batch_done(&self.batches[index].submission);
        }
        self.batches[index].read = true;
        let jobs: Vec<usize> = self.batches[index]
            .jobs
            .values()
            .copied()
            .filter(|&job| self.jobs[job].in_batch == Some(index))
            .collect();
        let adopted = self.batches[index].adopted;
        let mut ended = Vec::new();
        for job in jobs {
            self.jobs[job].in_batch = None;
            self.jobs[job].reservation = None;
            if adopted {
                self.jobs[job].last = Some(error.clone());
            } else {
                ended.extend(self.try_failed(job, error.clone()));
            }
        }
        self.record(&ended);
    }

    fn read_results(&mut self, batch: usize, settling: bool) -> Result<(), Error> {
        let id = self.batches[batch].state.id.clone();
        let mut results: Vec<(usize, BatchItemResult)> = Vec::new();
        // Answers to requests of an adopted batch that this run has no item for: paid for
        // by the run that submitted them, so kept in the journal for the run that has.
        let mut others: Vec<(Key, Response)> = Vec::new();
        {
            let jobs = &self.batches[batch].jobs;
            self.api
                .results(&id, &mut |custom_id, result| match jobs.get(custom_id) {
                    Some(&job) => results.push((job, result)),
                    None => {
                        if let (Some(key), BatchItemResult::Succeeded(Ok(response))) =
                            (Key::from_hex(custom_id), result)
                        {
                            others.push((key, response));
                        }
                    }
                })?;
        }
        if let (Some(journal), false) = (self.journal, others.is_empty()) {
            log::debug!(
                "batch {id}: {} answers for items not in this run kept",
                others.len()
            );
            for chunk in others.chunks(RECORD_CHUNK) {
                let outcomes: Vec<_> = chunk.iter().map(|(key, r)| (*key, Ok(r))).collect();
                journal.record_all(&outcomes);
            }
        }
        let mut seen = HashSet::with_capacity(results.len());
        let mut to_record: Vec<(usize, Result<Response, Error>)> = Vec::new();
        for (job, result) in results {
            if !seen.insert(job) || self.jobs[job].in_batch != Some(batch) {
                continue;
            }
            self.jobs[job].in_batch = None;
            let reservation = self.jobs[job].reservation.take();
            let admission = self.run.session().admission();
            let outcome = match result {
                BatchItemResult::Succeeded(Ok(mut response)) => {
                    // The API does not say how long a request took: its latency here is
                    // the batch's, from submission to its results.
                    if response.duration.is_zero() {
                        response.duration = self.batches[batch].since.elapsed();
                    }
                    let billed = Billed {
                        cost_usd: response.cost_usd,
                        usage: response.usage,
                    };
                    admission.settle_batched(reservation, &billed, Some(&response));
                    self.jobs[job].calls += 1;
                    Ok(response)
                }
                BatchItemResult::Succeeded(Err((error, billed))) => {
                    admission.settle_batched(reservation, &billed, None);
                    self.jobs[job].calls += 1;
                    Err(error)
                }
                BatchItemResult::Errored(error) => {
                    admission.settle_batched(reservation, &Billed::default(), None);
                    self.jobs[job].calls += 1;
                    Err(error)
                }
                BatchItemResult::Expired => {
                    admission.settle_batched(reservation, &Billed::default(), None);
                    Err(Error::BatchExpired {
                        batch_id: id.clone(),
                    })
                }
                BatchItemResult::Canceled => {
                    admission.settle_batched(reservation, &Billed::default(), None);
                    Err(Error::Cancelled)
                }
            };
            to_record.push((job, outcome));
        }
        // A request the results leave out is asked again.
        let missing: Vec<usize> = self.batches[batch]
            .jobs
            .values()
            .copied()
            .filter(|&job| self.jobs[job].in_batch == Some(batch))
            .collect();
        for job in missing {
            self.jobs[job].in_batch = None;
            self.jobs[job].reservation = None;
            to_record.push((
                job,
                Err(Error::Api {
                    status: None,
                    message: format!("the results of batch {id} left this request out"),
                }),
            ));
        }
        for chunk in to_record.chunks_mut(RECORD_CHUNK) {
            let mut ended = Vec::new();
            for (job, outcome) in chunk.iter_mut() {
                let outcome = std::mem::replace(outcome, Err(Error::Cancelled));
                if let Some(end) = self.judge(*job, outcome, settling) {
                    ended.push(end);
                }
            }
            self.record(&ended);
        }
        if let Some(journal) = self.journal {
            let _ = journal.batch_done(&self.batches[batch].submission);
        }
        self.batches[batch].read = true;
        Ok(())
    }

    /// Judge one ask's outcome under the policy: the job ends (its index returned, to be
    /// journaled), or asks again (a retry, the re-prompt) in a later round. While a cancel
    /// settles (`settling`), nothing asks again.
    fn judge(
        &mut self,
        index: usize,
        outcome: Result<Response, Error>,
        settling: bool,
    ) -> Option<usize> {
        let job = &self.jobs[index];
        let judged = life::judge(self.policy, &job.prompt, job.asked(), outcome, job.ask());
        let job = &mut self.jobs[index];
        let end = match judged {
            Judged::Answer { response, choice } => Ok(Answer {
                response,
                choice,
                attempts: job.calls,
            }),
            Judged::Fails(error) => Err(error),
            Judged::AskAgain(again) if !settling => {
                job.custom_id = Key::of(&self.settings, &again).to_hex();
                job.again = Some(again);
                job.tries = 0;
                job.last = None;
                return None;
            }
            Judged::AskAgain(_) => Err(job.last.clone().unwrap_or(Error::Cancelled)),
            Judged::TryFailed(error) => {
                if settling {
                    Err(life::keep_last(job.last.take(), error))
                } else {
                    return self.try_failed(index, error);
                }
            }
        };
        self.end(index, end);
        Some(index)
    }

    /// A try of job `index` failed with `error`: it is asked again if the retry policy says
    /// so, else it ends. Returns the job's index when it ended.
    fn try_failed(&mut self, index: usize, error: Error) -> Option<usize> {
        if error.is_fatal() {
            self.world.fail_fatally(&error);
        } else if self
            .world
            .retry_after(&error, self.jobs[index].tries)
            .is_some()
            && self.stop_reason().is_none()
        {
            log::debug!("a batch request failed ({error}); it goes in a follow-up batch");
            self.world.note(Event::WillRetry, Some(&error));
            self.jobs[index].last = Some(error);
            return None;
        }
        self.end(index, Err(error));
        Some(index)
    }

    /// Job `index` ends with `outcome`.
    fn end(&mut self, index: usize, outcome: Result<Answer, Error>) {
        let job = &mut self.jobs[index];
        job.reservation = None;
        job.in_batch = None;
        let calls = job.calls;
        job.outcome = Some(outcome.map_err(|error| (error, calls)));
    }

    /// Write the outcomes of ended jobs to the journal, together (a stop is not an
    /// outcome: nothing to inspect later).
    fn record(&self, ended: &[usize]) {
        let Some(journal) = self.journal else {
            return;
        };
        let mut outcomes = Vec::with_capacity(ended.len());
        for &index in ended {
            let job = &self.jobs[index];
            let key = Key::of(&self.settings, job.asked());
            match &job.outcome {
                Some(Ok(answer)) => outcomes.push((key, Ok(&answer.response))),
                Some(Err((Error::Cancelled | Error::Stopped(_) | Error::Closed, _))) | None => {}
                Some(Err((error, _))) => outcomes.push((key, Err(error))),
            }
        }
        journal.record_all(&outcomes);
    }

    /// The run stops: its batches are cancelled (their answers so far kept) or left
    /// running, as the session says, and every job without an answer ends with `reason`.
    fn stop(&mut self, reason: Error, on_cancel: BatchCancel) {
        let running: Vec<usize> = (0..self.batches.len())
            .filter(|&b| !self.batches[b].read)
            .collect();
        let mut cancelled = 0;
        if !running.is_empty() && on_cancel == BatchCancel::CancelAndKeepResults {
            for &b in &running {
                let id = self.batches[b].state.id.clone();
                match self.api.cancel(&id) {
                    Ok(state) => {
                        self.batches[b].state = state;
                        cancelled += 1;
                    }
                    Err(error) => log::warn!("cannot cancel batch {id}: {error}"),
                }
            }
        }
        // Their answers so far are waited for only if a cancel reached the API (a fatal
        // error, the API unreachable, would make every look fail too).
        if cancelled > 0 {
            let deadline = std::time::Instant::now() + CANCEL_SETTLE;
            while self.batches.iter().any(|b| !b.read) && std::time::Instant::now() < deadline {
                if !self.look(true) && self.batches.iter().any(|b| !b.read) {
                    // The run's stop is set, so its waits return at once: a plain pause
                    // between two looks at the API.
                    std::thread::sleep(CANCEL_POLL);
                }
            }
        }
        let left: Vec<&str> = self
            .batches
            .iter()
            .filter(|b| !b.read)
            .map(|b| b.state.id.as_str())
            .collect();
        if !left.is_empty() {
            log::warn!(
                "{} batch(es) left running ({}): a rerun with the same journal reads their \
                 answers instead of asking again",
                left.len(),
                left.join(", ")
            );
        }
        for index in 0..self.jobs.len() {
            if self.jobs[index].outcome.is_none() {
                // A request in a batch left running may still be billed: what was reserved
                // for it counts as spent.
                if self.jobs[index].in_batch.is_some() {
                    if let Some(reservation) = self.jobs[index].reservation.take() {
                        reservation.keep();
                    }
                }
                let last = self.jobs[index].last.take();
                self.end(index, Err(life::keep_last(last, reason.clone())));
            }
        }
    }

    /// Report the run's batches to its progress.
    fn report_progress(&self) {
        let Some(progress) = self.run.progress.as_ref() else {
            return;
        };
        let mut sum = BatchProgress {
            submitted: self.batches.len() as u64,
            ..BatchProgress::default()
        };
        for batch in &self.batches {
            let c = batch.state.counts;
            sum.running += u64::from(batch.state.status != BatchStatus::Ended);
            sum.processing += c.processing;
            sum.succeeded += c.succeeded;
            sum.errored += c.errored;
            sum.canceled += c.canceled;
            sum.expired += c.expired;
        }
        progress.batches(sum);
    }
}
