//! What a backend that answers many prepared requests in one submission offers the engine
//! (the Message Batches API): build a request's body, submit, look, cancel, read results.
//! The engine (`engine/batched.rs`) does everything around it: the journal's record of
//! every submission, the budget, retries in follow-up batches, the policy's re-prompts,
//! polling and the stop.

use std::time::SystemTime;

use crate::{Error, Response};

/// The most requests one batch may hold (the API's documented limit).
pub(crate) const MAX_BATCH_REQUESTS: usize = 100_000;

/// The largest body one batch's creation may send (the API's 256 MB, read as MiB), less a
/// margin for the envelope around the requests.
pub(crate) const MAX_BATCH_BYTES: usize = (256 << 20) - (64 << 10);

/// What a batch request costs against the same request on the Messages API: half, for every
/// kind of token (the cache multipliers apply on top).
pub(crate) const BATCH_PRICE_FACTOR: f64 = 0.5;

/// One request of a batch: its `custom_id` and its `params` as JSON text (what a
/// `/v1/messages` body would be, without `stream`), so its size is known before submission.
#[derive(Debug, Clone)]
pub(crate) struct BatchRequest {
    pub custom_id: String,
    pub params: String,
}

/// A batch's `processing_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchStatus {
    InProgress,
    Canceling,
    Ended,
}

/// A batch's `request_counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchCounts {
    pub processing: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
}

/// A batch as the API last described it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchState {
    pub id: String,
    pub status: BatchStatus,
    pub counts: BatchCounts,
    /// When the API created it (`created_at`), if it said.
    pub created_at: Option<SystemTime>,
}

impl BatchState {
    /// How many requests it holds.
    pub(crate) fn total(&self) -> u64 {
        let c = self.counts;
        c.processing + c.succeeded + c.errored + c.canceled + c.expired
    }
}

/// What one request of an ended batch came to.
#[derive(Debug, Clone)]
pub(crate) enum BatchItemResult {
    /// `succeeded`: the message, folded as a streamed answer is (a refusal, a cut or a
    /// missing structured answer is an `Err`, priced in `billed`), priced at the batch price.
    Succeeded(Result<Response, (Error, crate::backend::Billed)>),
    /// `errored`: the API's error, as a `/v1/messages` call failing so would be (not billed).
    Errored(Error),
    /// `canceled`: a cancel ended the batch before the request was processed.
    Canceled,
    /// `expired`: the batch's 24 hours ran out first (not billed).
    Expired,
}

/// A backend that takes batches. Every call is one blocking HTTP request; none retries by
/// itself (the engine does, so that a create is never sent twice unseen).
pub(crate) trait BatchApi: Send + Sync {
    /// The body of a request answering `prompt` (as JSON text).
    fn params(&self, prompt: &str) -> String;

    /// Submit one batch. `Error::BatchRejected` when the API refused it as invalid (it was
    /// not created); a failure whose answer was not read (a connection cut) may have
    /// created it: the engine looks for it with [`list_since`](Self::list_since).
    fn create(&self, requests: &[BatchRequest]) -> Result<BatchState, Error>;

    /// The batch's state now.
    fn retrieve(&self, id: &str) -> Result<BatchState, Error>;

    /// Every batch created at or after `since`, newest first (the list is paged: all pages
    /// back to `since`).
    fn list_since(&self, since: SystemTime) -> Result<Vec<BatchState>, Error>;

    /// Ask the API to cancel the batch; it moves to `canceling`, then ends with the results
    /// it has.
    fn cancel(&self, id: &str) -> Result<BatchState, Error>;

    /// Read an ended batch's results (JSON lines, in any order), handing each to `each` as
    /// it is read.
    fn results(&self, id: &str, each: &mut dyn FnMut(&str, BatchItemResult)) -> Result<(), Error>;
}
