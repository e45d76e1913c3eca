//! One call's answer as the API streams it (server-sent events): the events are read one
//! at a time and folded into a [`Message`], so a cut stream still says what came and what
//! it billed.

use std::io::{self, BufRead, Read};

use serde_json::Value;

use crate::Usage;

/// The longest line of an event stream this reader takes; deltas are small, so a longer one
/// is not the API talking.
const MAX_LINE_BYTES: u64 = 16 << 20;

/// One call's answer so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Message {
    pub id: String,
    pub text: String,
    /// The JSON text of a tool call's input (structured output), as it streamed.
    pub tool_input: Option<String>,
    pub stop_reason: Option<String>,
    pub usage: Usage,
    /// Of the cache writes, those the API said were one-hour entries
    /// (`usage.cache_creation.ephemeral_1h_input_tokens`), when it said.
    pub one_hour_writes: Option<u64>,
    /// `message_stop` came: the call is whole.
    pub stopped: bool,
}

/// What an event meant to the caller.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// The answer began (`message_start`): the prompt cache holds the request's prefix.
    Began,
    Continue,
    /// `message_stop`: nothing more comes.
    Stopped,
}

/// An `error` event: the API failed after the stream began.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StreamError {
    pub kind: String,
    pub message: String,
}

impl Message {
    /// A whole message as a call without streaming gives it (a batch's result): the same
    /// fields a stream's events fold into, so both are judged by one `answer::outcome`.
    pub(super) fn from_object(message: &Value) -> Message {
        let mut folded = Message {
            id: message
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            stop_reason: message
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_string),
            stopped: true,
            ..Message::default()
        };
        for block in message["content"].as_array().into_iter().flatten() {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => folded
                    .text
                    .push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("tool_use") => {
                    // As a stream would have given it: the input's JSON text.
                    let input = block.get("input").map(Value::to_string).unwrap_or_default();
                    folded
                        .tool_input
                        .get_or_insert_with(String::new)
                        .push_str(&input);
                }
                _ => {}
            }
        }
        folded.take_usage(&message["usage"]);
        folded
    }

    /// Fold one event's data into the answer.
    pub(super) fn apply(&mut self, data: &Value) -> Result<Step, StreamError> {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "message_start" => {
                let message = &data["message"];
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = id.to_string();
                }
                self.take_usage(&message["usage"]);
                return Ok(Step::Began);
            }
            "content_block_start" => {
                let block = &data["content_block"];
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        self.text
                            .push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("tool_use") => {
                        self.tool_input.get_or_insert_with(String::new);
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.text
                            .push_str(delta.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("input_json_delta") => {
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        self.tool_input
                            .get_or_insert_with(String::new)
                            .push_str(part);
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = data["delta"].get("stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_string());
                }
                self.take_usage(&data["usage"]);
            }
            "message_stop" => {
                self.stopped = true;
                return Ok(Step::Stopped);
            }
            "error" => {
                let error = &data["error"];
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                return Err(StreamError {
                    kind: text("type"),
                    message: text("message"),
                });
            }
            // `ping`, `content_block_stop` and what a newer API adds.
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// Usage counts are running totals: a later event's count replaces an earlier one's.
    fn take_usage(&mut self, usage: &Value) {
        let count = |key: &str| usage.get(key).and_then(Value::as_u64);
        if let Some(n) = count("input_tokens") {
            self.usage.input_tokens = n;
        }
        if let Some(n) = count("cache_creation_input_tokens") {
            self.usage.cache_creation_input_tokens = n;
        }
        if let Some(n) = count("cache_read_input_tokens") {
            self.usage.cache_read_input_tokens = n;
        }
        if let Some(n) = count("output_tokens") {
            self.usage.output_tokens = n;
        }
        if let Some(n) = usage
            .get("cache_creation")
            .and_then(|c| c.get("ephemeral_1h_input_tokens"))
            .and_then(Value::as_u64)
        {
            self.one_hour_writes = Some(n);
        }
    }
}

/// Reads server-sent events: `each(data)` for every event with data, until it says stop or
/// the stream ends (`Ok(false)`: it ended first).
pub(super) fn read_events<R: Read>(
    reader: &mut io::BufReader<R>,
    mut each: impl FnMut(&str) -> Result<bool, io::Error>,
) -> Result<bool, io::Error> {
    let mut data = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(false);
        }
        if line.last() != Some(&b'\n') && read as u64 == MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an event stream line longer than 16 MiB",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            if !data.is_empty() {
                let done = each(&data)?;
                data.clear();
                if done {
                    return Ok(true);
                }
            }
        } else if let Some(rest) = text.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
        // `event:`, `id:`, `retry:` and comments: the data says its own type.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fold(events: &[Value]) -> (Message, Vec<Step>) {
        let mut message = Message::default();
        let steps = events
            .iter()
            .map(|e| message.apply(e).expect("no error event"))
            .collect();
        (message, steps)
    }

    #[test]
    fn a_whole_answer_with_usage_is_folded() {
        let (message, steps) = fold(&[
            json!({"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":120,"cache_creation_input_tokens":1500,"cache_read_input_tokens":0,"output_tokens":1}}}),
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            json!({"type":"ping"}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"The invoice "}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"is overdue."}}),
            json!({"type":"content_block_stop","index":0}),
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}),
            json!({"type":"message_stop"}),
        ]);
        assert_eq!(steps[0], Step::Began);
        assert_eq!(steps.last(), Some(&Step::Stopped));
        assert_eq!(message.text, "The invoice is overdue.");
        assert_eq!(message.stop_reason.as_deref(), Some("end_turn"));
        assert!(message.stopped);
        assert_eq!(
            message.usage,
            Usage {
                input_tokens: 120,
                output_tokens: 7,
                cache_creation_input_tokens: 1500,
                cache_read_input_tokens: 0,
            }
        );
    }

    #[test]
    fn a_tool_call_input_is_joined_from_its_parts() {
        let (message, _) = fold(&[
            json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"structured_output","input":{}}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"score\":"}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":" 7}"}}),
        ]);
        assert_eq!(message.tool_input.as_deref(), Some("{\"score\": 7}"));
        assert!(!message.stopped);
    }

    #[test]
    fn an_error_event_is_an_error() {
        let mut message = Message::default();
        let error = message
            .apply(
                &json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            )
            .unwrap_err();
        assert_eq!(error.kind, "overloaded_error");
    }

    #[test]
    fn events_are_split_on_blank_lines_whatever_the_line_ends() {
        let raw = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: a comment\nevent: ping\ndata: {\"b\":\ndata: 2}\n\n";
        let mut reader = io::BufReader::new(raw.as_bytes());
        let mut seen = Vec::new();
        let ended = read_events(&mut reader, |data| {
            seen.push(data.to_string());
            Ok(false)
        })
        .unwrap();
        assert!(!ended, "the stream ended by itself");
        assert_eq!(seen, vec!["{\"a\":1}", "{\"b\":\n2}"]);
    }
}
