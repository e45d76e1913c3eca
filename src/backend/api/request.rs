//! A call's body: the same model, system prompt, schema and effort on every call of a
//! session, the conversation so far and the prompt.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::options::{ApiOptions, ANTHROPIC_VERSION};
use crate::backend::spec::AnswerSpec;
use crate::budget::{CacheTtl, Rate};
use crate::Usage;

/// The tool a structured answer is given through: the only one offered, and forced.
pub(super) const STRUCTURED_TOOL: &str = "structured_output";

/// The model when the session names none: a capable one at a batch-friendly price.
pub(super) const DEFAULT_MODEL: &str = "claude-sonnet-4-5";

/// The API's name for a model: the CLI's aliases (`sonnet`, `opus`, `haiku`) name the
/// API's moving aliases of the current models; any other name is sent as it is.
pub(super) fn api_model_name(model: Option<&str>) -> String {
    match model.map(str::trim) {
        None | Some("") => DEFAULT_MODEL.to_string(),
        Some("sonnet") => "claude-sonnet-4-5".to_string(),
        Some("opus") => "claude-opus-4-5".to_string(),
        Some("haiku") => "claude-haiku-4-5".to_string(),
        Some(name) => name.to_string(),
    }
}

/// What every call of a session carries besides its messages.
#[derive(Debug)]
pub(super) struct RequestTemplate {
    model: String,
    max_tokens: u32,
    system: Option<String>,
    schema: Option<Value>,
    effort: Option<&'static str>,
    /// How long the system block's cache entry lives: an hour for a batch session, whose
    /// requests are processed over up to an hour after one request wrote it.
    cache_ttl: CacheTtl,
}

impl RequestTemplate {
    pub(super) fn new(spec: &AnswerSpec, options: &ApiOptions) -> RequestTemplate {
        // The CLI's two prompts, as one: the second comes after the first.
        let parts: Vec<&str> = [
            spec.system_prompt.as_deref(),
            spec.append_system_prompt.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect();
        RequestTemplate {
            model: api_model_name(spec.model.as_deref()),
            max_tokens: options.max_tokens,
            system: (!parts.is_empty()).then(|| parts.join("\n\n")),
            schema: spec.json_schema.clone(),
            effort: spec.effort.map(|e| e.as_str()),
            cache_ttl: CacheTtl::FiveMinutes,
        }
    }

    /// The same, its system block cached for `ttl` (the answer does not change: the
    /// fingerprint leaves it out).
    pub(super) fn with_cache_ttl(mut self, ttl: CacheTtl) -> RequestTemplate {
        self.cache_ttl = ttl;
        self
    }

    pub(super) fn model(&self) -> &str {
        &self.model
    }

    pub(super) fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    pub(super) fn is_structured(&self) -> bool {
        self.schema.is_some()
    }

    /// The body of a call with these messages, streamed.
    pub(super) fn body(&self, messages: &[Value]) -> Vec<u8> {
        let mut body = self.request(messages);
        body["stream"] = json!(true);
        serde_json::to_vec(&body).expect("a JSON value serialises")
    }

    /// A batch request's `params` answering `prompt`: a streamed call's body for one user
    /// message, without `stream` (the API refuses a batch request that streams).
    pub(super) fn params(&self, prompt: &str) -> String {
        let messages = [json!({"role": "user", "content": prompt})];
        serde_json::to_string(&self.request(&messages)).expect("a JSON value serialises")
    }

    /// What a call with these messages asks, streamed or not.
    fn request(&self, messages: &[Value]) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": messages,
        });
        if let Some(system) = &self.system {
            // One block, marked: every item shares it, so the API caches it once (the
            // warm-up gate makes one item write it before the others read it).
            let cache_control = match self.cache_ttl {
                CacheTtl::FiveMinutes => json!({"type": "ephemeral"}),
                CacheTtl::OneHour => json!({"type": "ephemeral", "ttl": "1h"}),
            };
            body["system"] = json!([{
                "type": "text",
                "text": system,
                "cache_control": cache_control,
            }]);
        }
        if let Some(schema) = &self.schema {
            body["tools"] = json!([{
                "name": STRUCTURED_TOOL,
                "description": "Give the answer in this form.",
                "input_schema": schema,
            }]);
            body["tool_choice"] = json!({"type": "tool", "name": STRUCTURED_TOOL});
        }
        if let Some(effort) = self.effort {
            body["output_config"] = json!({ "effort": effort });
        }
        body
    }

    /// Of a call's `writes` cache-write tokens, those billed as one-hour entries: what the
    /// API `reported` (`cache_creation.ephemeral_1h_input_tokens`) when it did, else all
    /// or none by the session's TTL.
    pub(super) fn one_hour_writes(&self, reported: Option<u64>, writes: u64) -> u64 {
        reported.unwrap_or(match self.cache_ttl {
            CacheTtl::FiveMinutes => 0,
            CacheTtl::OneHour => writes,
        })
    }

    /// What `usage` costs on this session's model at `rate`, `one_hour_writes` of its cache
    /// writes being one-hour entries.
    pub(super) fn cost_usd(&self, usage: &Usage, one_hour_writes: u64, rate: Rate) -> f64 {
        crate::budget::call_cost_usd(Some(&self.model), usage, one_hour_writes, rate)
    }

    /// Tokens a call carries besides the prompt and the system prompt (its framing and the
    /// schema's tool), for the throttle's estimate.
    pub(super) fn overhead_tokens(&self) -> u64 {
        let schema = self.schema.as_ref().map_or(0, |s| s.to_string().len() + 80);
        (60 + schema as u64) / 4 + 10
    }

    /// What besides the prompt decides an answer (the journal's key): this backend's own,
    /// so a journal written by the CLI backend is not replayed here, nor the reverse (the
    /// CLI adds context of its own, so the same prompt is not the same request).
    pub(super) fn fingerprint(&self) -> String {
        let inputs = json!({
            "backend": "messages-api",
            "anthropic-version": ANTHROPIC_VERSION,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "schema": self.schema,
            "effort": self.effort,
        });
        Sha256::digest(inputs.to_string().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::spec::Effort;

    fn spec() -> AnswerSpec {
        AnswerSpec {
            model: Some("haiku".into()),
            system_prompt: Some("You review invoices.".into()),
            append_system_prompt: Some("Answer in one line.".into()),
            json_schema: None,
            effort: Some(Effort::Low),
        }
    }

    #[test]
    fn the_body_carries_the_session_settings_and_a_cached_system_block() {
        let template = RequestTemplate::new(&spec(), &ApiOptions::default().max_tokens(512));
        let messages = [json!({"role": "user", "content": "Is invoice 4411 overdue?"})];
        let body: Value = serde_json::from_slice(&template.body(&messages)).unwrap();
        assert_eq!(body["model"], "claude-haiku-4-5");
        assert_eq!(body["max_tokens"], 512);
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["system"][0]["text"],
            "You review invoices.\n\nAnswer in one line."
        );
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(body["output_config"]["effort"], "low");
        assert_eq!(body["messages"][0]["content"], "Is invoice 4411 overdue?");
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn a_batch_request_is_the_streamed_body_without_stream_and_an_hour_long_cache() {
        let template = RequestTemplate::new(&spec(), &ApiOptions::default().max_tokens(512))
            .with_cache_ttl(CacheTtl::OneHour);
        let prompt = "Summarise the attached supplier letter, which disputes the late fee on \
                      invoice 4411 and asks for the penalty to be waived given the bank holiday.";
        let params: Value = serde_json::from_str(&template.params(prompt)).unwrap();
        let streamed: Value =
            serde_json::from_slice(&template.body(&[json!({"role": "user", "content": prompt})]))
                .unwrap();
        assert!(params.get("stream").is_none());
        let mut without_stream = streamed.clone();
        without_stream.as_object_mut().unwrap().remove("stream");
        assert_eq!(params, without_stream);
        // The cache-warming call (streamed) writes what the batch's requests read.
        assert_eq!(streamed["system"][0]["cache_control"]["ttl"], "1h");
        assert_eq!(params["messages"][0]["content"], prompt);
        // A Messages session keeps the default five minutes.
        let messages = RequestTemplate::new(&spec(), &ApiOptions::default());
        let body: Value = serde_json::from_slice(&messages.body(&[])).unwrap();
        assert_eq!(
            body["system"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        // The TTL does not change an answer.
        assert_eq!(
            RequestTemplate::new(&spec(), &ApiOptions::default().max_tokens(512)).fingerprint(),
            template.fingerprint()
        );
    }

    #[test]
    fn cache_writes_are_priced_by_what_the_api_said_else_by_the_session_ttl() {
        let options = ApiOptions::default();
        let five = RequestTemplate::new(&spec(), &options);
        let hour = RequestTemplate::new(&spec(), &options).with_cache_ttl(CacheTtl::OneHour);
        assert_eq!(five.one_hour_writes(None, 1500), 0);
        assert_eq!(hour.one_hour_writes(None, 1500), 1500);
        assert_eq!(hour.one_hour_writes(Some(200), 1500), 200);
        assert_eq!(five.one_hour_writes(Some(200), 1500), 200);
    }

    #[test]
    fn a_schema_is_one_forced_tool() {
        let mut spec = spec();
        spec.json_schema =
            Some(json!({"type": "object", "properties": {"score": {"type": "integer"}}}));
        let template = RequestTemplate::new(&spec, &ApiOptions::default());
        let body: Value = serde_json::from_slice(&template.body(&[])).unwrap();
        assert_eq!(body["tools"][0]["name"], STRUCTURED_TOOL);
        assert_eq!(body["tool_choice"]["name"], STRUCTURED_TOOL);
        assert!(template.is_structured());
    }

    #[test]
    fn the_fingerprint_changes_with_what_decides_an_answer() {
        let options = ApiOptions::default();
        let base = RequestTemplate::new(&spec(), &options).fingerprint();
        assert_eq!(base, RequestTemplate::new(&spec(), &options).fingerprint());
        let mut other = spec();
        other.model = Some("sonnet".into());
        assert_ne!(base, RequestTemplate::new(&other, &options).fingerprint());
        assert_ne!(
            base,
            RequestTemplate::new(&spec(), &options.clone().max_tokens(100)).fingerprint()
        );
        // The key is not part of it: a new key answers the same.
        assert_eq!(
            base,
            RequestTemplate::new(&spec(), &options.api_key("sk-ant-other")).fingerprint()
        );
    }
}
