//! The Messages API backend: each turn is one blocking HTTPS request (more when an answer is
//! continued) from the worker thread that runs the item, its answer streamed back as
//! server-sent events. No process per item: a connection is an HTTP agent that keeps its
//! connection alive between the turns of one worker.
//!
//! `options` holds what only this backend understands (always compiled, so a builder names
//! it without the feature); `request` builds a call's body, `stream` folds its events into
//! an answer, `answer` judges a whole message (streamed or a batch's), `reply` reads a
//! reply's head and error body, `conn` runs a turn, `batch` speaks the Message Batches API.
//! [`start`] makes a session's backend of them.

mod options;
pub use options::ApiOptions;

#[cfg(feature = "api")]
mod answer;
#[cfg(feature = "api")]
mod batch;
#[cfg(feature = "api")]
mod conn;
#[cfg(feature = "api")]
mod reply;
#[cfg(feature = "api")]
mod request;
#[cfg(feature = "api")]
mod stream;

#[cfg(feature = "api")]
pub(crate) use imp::start_lane;

/// How a session's items reach the API.
#[cfg_attr(not(feature = "api"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// One `/v1/messages` call per turn, from the worker that runs the item.
    Messages,
    /// The Message Batches API (half price, answers within 24 hours):
    /// [`Backend::batches`](crate::backend::Backend::batches) gives its client, and
    /// `checkout` still answers through `/v1/messages` (the request that warms the prompt
    /// cache before a batch, conversations). The system block is cached for an hour.
    Batches,
}

#[cfg(feature = "api")]
mod imp {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::{Condvar, Mutex};

    use super::batch::BatchClient;
    use super::conn::ApiConn;
    use super::options::{ApiOptions, ANTHROPIC_VERSION, DEFAULT_BASE_URL};
    use super::request::RequestTemplate;
    use super::Lane;
    use crate::backend::batch::BatchApi;
    use crate::backend::spec::AnswerSpec;
    use crate::backend::{Backend, BackendStats, Checkout, Conn, Started};
    use crate::budget::CacheTtl;
    use crate::Error;

    /// How often a checkout waiting for a free connection asks its `should_stop` again,
    /// besides every `wake`.
    const CHECKOUT_POLL: Duration = Duration::from_millis(50);

    /// The API key, kept out of every `Debug` and error.
    #[derive(Clone)]
    pub(super) struct ApiKey(pub(super) String);

    impl fmt::Debug for ApiKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("<redacted>")
        }
    }

    impl ApiKey {
        /// `request` with what every call to the API carries: the key and the version.
        pub(super) fn sign<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
            request
                .header("x-api-key", &self.0)
                .header("anthropic-version", ANTHROPIC_VERSION)
        }
    }

    /// Find the key and the address, and make the session's backend for `lane`: with
    /// [`Lane::Batches`], [`Backend::batches`] gives a [`BatchClient`] on the same key,
    /// address and request settings (its system block cached for an hour, on the
    /// streamed calls too), and `checkout` still answers as on the Messages lane.
    /// `options` were validated.
    pub(crate) fn start_lane(
        spec: &AnswerSpec,
        concurrency: usize,
        options: &ApiOptions,
        lane: Lane,
    ) -> Result<Started, Error> {
        let key = options
            .api_key
            .clone()
            .or_else(|| std::env::var("ANTHROPIC_API_KEY").ok())
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                Error::InvalidConfig(
                    "the Messages API backend needs an API key: set ANTHROPIC_API_KEY or \
                     SessionBuilder::api_key(..) (a claude.ai subscription login works with \
                     the CLI backend, Backend::Cli, only)"
                        .into(),
                )
            })?;
        let base_url = options
            .base_url
            .clone()
            .or_else(|| {
                std::env::var("ANTHROPIC_BASE_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(Error::InvalidConfig(format!(
                "ANTHROPIC_BASE_URL must start with http:// or https://, not {:?}",
                crate::error::shorten(&base_url, 80)
            )));
        }
        let cache_ttl = match lane {
            Lane::Messages => CacheTtl::FiveMinutes,
            Lane::Batches => CacheTtl::OneHour,
        };
        let template = Arc::new(RequestTemplate::new(spec, options).with_cache_ttl(cache_ttl));
        let answer_settings = Ok(template.fingerprint());
        let model = Some(template.model().to_string());
        let base_url = base_url.trim_end_matches('/');
        let key = ApiKey(key);
        let batches = (lane == Lane::Batches)
            .then(|| BatchClient::new(base_url, key.clone(), Arc::clone(&template)));
        let shared = Arc::new(Shared {
            endpoint: format!("{base_url}/v1/messages"),
            key,
            template,
            max_continuations: options.max_continuations,
            concurrency,
            slots: Mutex::new(Slots::default()),
            freed: Condvar::new(),
            agents_made: AtomicU64::new(0),
        });
        Ok(Started {
            backend: Box::new(ApiBackend { shared, batches }),
            program: None,
            answer_settings,
            model,
        })
    }

    /// What the session's connections share.
    pub(super) struct Shared {
        pub(super) endpoint: String,
        pub(super) key: ApiKey,
        pub(super) template: Arc<RequestTemplate>,
        pub(super) max_continuations: u32,
        concurrency: usize,
        slots: Mutex<Slots>,
        freed: Condvar,
        agents_made: AtomicU64,
    }

    /// The connections: idle agents keep their HTTP connection alive for the next turn.
    #[derive(Default)]
    struct Slots {
        idle: Vec<ureq::Agent>,
        /// Checked out, by connection id: a close shuts their sockets.
        busy: HashMap<u64, ureq::Agent>,
        /// Turns in flight, which a close waits for.
        in_turn: usize,
        next_id: u64,
        closed: bool,
    }

    impl Shared {
        /// A new agent: its own keep-alive connection, shut from another thread on abort.
        pub(super) fn new_agent(&self) -> ureq::Agent {
            self.agents_made.fetch_add(1, Ordering::Relaxed);
            let config = ureq::Agent::config_builder()
                // Error statuses carry the API's word (its error body, `retry-after`).
                .http_status_as_error(false)
                .max_idle_connections(1)
                .max_idle_connections_per_host(1)
                .timeout_connect(Some(Duration::from_secs(30)))
                .user_agent(concat!("claude-rayon/", env!("CARGO_PKG_VERSION")))
                .build();
            ureq::Agent::new_with_config(config)
        }

        pub(super) fn is_closed(&self) -> bool {
            self.slots.lock().closed
        }

        /// A connection's agent changed (the last one was shut by an abort).
        pub(super) fn replace_agent(&self, id: u64, agent: &ureq::Agent) {
            let mut slots = self.slots.lock();
            if slots.busy.contains_key(&id) {
                slots.busy.insert(id, agent.clone());
            }
        }

        /// A turn begins; `false` once closed.
        pub(super) fn begin_turn(&self) -> bool {
            let mut slots = self.slots.lock();
            if slots.closed {
                return false;
            }
            slots.in_turn += 1;
            true
        }

        pub(super) fn end_turn(&self) {
            let mut slots = self.slots.lock();
            slots.in_turn -= 1;
            self.freed.notify_all();
        }

        /// A connection comes back; its agent is kept for the next one when it can be.
        pub(super) fn check_in(&self, id: u64, agent: Option<ureq::Agent>) {
            let mut slots = self.slots.lock();
            slots.busy.remove(&id);
            if let Some(agent) = agent.filter(|_| !slots.closed) {
                slots.idle.push(agent);
            }
            self.freed.notify_all();
        }
    }

    /// A session's connections to the Messages API.
    pub(crate) struct ApiBackend {
        shared: Arc<Shared>,
        /// On the batch lane.
        batches: Option<BatchClient>,
    }

    impl Backend for ApiBackend {
        fn checkout(&self, should_stop: &dyn Fn() -> bool) -> Result<Checkout, Error> {
            let shared = &self.shared;
            let mut slots = shared.slots.lock();
            loop {
                if slots.closed {
                    return Err(Error::Closed);
                }
                if slots.busy.len() < shared.concurrency {
                    let agent = match slots.idle.pop() {
                        Some(agent) => agent,
                        None => shared.new_agent(),
                    };
                    let id = slots.next_id;
                    slots.next_id += 1;
                    slots.busy.insert(id, agent.clone());
                    return Ok(Checkout::Ready(
                        Box::new(ApiConn::new(Arc::clone(shared), id, agent)) as Box<dyn Conn>,
                    ));
                }
                if should_stop() {
                    return Ok(Checkout::Stopped);
                }
                shared
                    .freed
                    .wait_until(&mut slots, Instant::now() + CHECKOUT_POLL);
            }
        }

        fn wake(&self) {
            self.shared.freed.notify_all();
        }

        fn request_overhead_tokens(&self) -> u64 {
            self.shared.template.overhead_tokens()
        }

        fn max_output_tokens(&self) -> Option<u64> {
            Some(u64::from(self.shared.template.max_tokens()))
        }

        fn close(&self, settle: Duration) {
            let shared = &self.shared;
            let mut slots = shared.slots.lock();
            slots.closed = true;
            slots.idle.clear();
            // Sockets shut now: turns in flight end at once.
            for agent in slots.busy.values() {
                agent.clone().shutdown();
            }
            shared.freed.notify_all();
            let deadline = crate::clock::saturating_add(Instant::now(), settle);
            while slots.in_turn > 0 {
                if shared.freed.wait_until(&mut slots, deadline).timed_out() {
                    break;
                }
            }
        }

        fn release(&self) {}

        fn stats(&self) -> BackendStats {
            BackendStats::default()
        }

        fn batches(&self) -> Option<&dyn BatchApi> {
            self.batches.as_ref().map(|client| client as &dyn BatchApi)
        }
    }

    impl fmt::Debug for ApiBackend {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let slots = self.shared.slots.lock();
            f.debug_struct("ApiBackend")
                .field("endpoint", &self.shared.endpoint)
                .field("model", &self.shared.template.model())
                .field("connections_busy", &slots.busy.len())
                .field("connections_idle", &slots.idle.len())
                .field("batches", &self.batches)
                .finish()
        }
    }
}
