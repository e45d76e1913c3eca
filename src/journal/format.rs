//! The journal's lines: a header, then one record per item, each a JSON object that carries
//! a checksum of its own body, so a torn or damaged line is recognised and skipped.
//!
//! ```text
//! {"claude_rayon_journal":2}
//! {"crc":"1c291ca3","r":{"key":"9f…","answer":{"text":"…","cost_usd":0.0021,…}}}
//! {"crc":"77a0e1b2","r":{"key":"03…","error":"API error (status 400): …"}}
//! ```
//!
//! `crc` is the CRC-32 (IEEE) of the exact bytes of the `r` value as written. `key` is the
//! SHA-256 of what decides the answer (see [`Key`]), in lower-case hex.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Response, Usage};

/// The first line of every journal. Version 2: SHA-256 keys.
pub(crate) const HEADER: &str = r#"{"claude_rayon_journal":2}"#;

/// The first line of a journal written before version 2, whose keys (FNV-1a-128) anyone can
/// make collide: its answers are never replayed (see `journal::load`).
pub(crate) const HEADER_V1: &str = r#"{"claude_rayon_journal":1}"#;

/// What decides an item's answer, hashed: the session's settings that shape the request and
/// the prompt exactly as sent.
///
/// SHA-256, so that no one can write a document whose key is that of another, answered one
/// (with a non-cryptographic hash such a document is found in a fraction of a second, and it
/// would be answered from the journal without reaching the model). The input is
/// `len(settings) ‖ settings ‖ len(prompt) ‖ prompt`, each length a little-endian `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(pub(crate) [u8; 32]);

impl Key {
    /// The key of `prompt` under settings whose fingerprint is `settings`.
    pub(crate) fn of(settings: &str, prompt: &str) -> Key {
        let mut hash = Sha256::new();
        // Lengths first, so that no shift of text between the two parts gives the same input.
        hash.update((settings.len() as u64).to_le_bytes());
        hash.update(settings.as_bytes());
        hash.update((prompt.len() as u64).to_le_bytes());
        hash.update(prompt.as_bytes());
        Key(hash.finalize().into())
    }

    pub(crate) fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_hex(hex: &str) -> Option<Key> {
        // Lower-case only, so that each key has one spelling.
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Key(key))
    }
}

/// One item's record: its answer, or the error it ended with (kept for inspection, never
/// replayed).
///
/// A batch submission's record has no key but a `batch` (see [`BatchNote`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<StoredAnswer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchNote>,
}

/// One step of a batch submission's life, as written: the intent (`since` and the
/// `custom_ids`, written before the batch is created), the batch's id once the API gave it,
/// and `done` once every result was read and recorded. All three share `submission`, this
/// program's name for it.
///
/// ```text
/// {"crc":"…","r":{"batch":{"submission":"s18f…","since":1764770000,"custom_ids":["9f…",…]}}}
/// {"crc":"…","r":{"batch":{"submission":"s18f…","id":"msgbatch_01…"}}}
/// {"crc":"…","r":{"batch":{"submission":"s18f…","done":true}}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchNote {
    pub submission: String,
    /// Seconds since the UNIX epoch a little before the creation was asked: the batch, if it
    /// was created, is among those the API lists as created since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

/// An answer as the journal keeps it: a type of its own, so that [`Response`] can grow or
/// change its serde form without old journals failing to replay. The field names and their
/// JSON are journal format 2 (pinned by `a_written_line_stays_readable_and_the_same`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredAnswer {
    pub text: String,
    pub structured: Option<serde_json::Value>,
    pub usage: StoredUsage,
    pub cost_usd: f64,
    pub duration: Duration,
    pub num_turns: u32,
    pub session_id: String,
    pub api_retries: u32,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub continuations: u32,
    #[serde(default)]
    pub api_calls: u32,
}

/// Tokens as the journal keeps them (see [`StoredAnswer`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl From<&Response> for StoredAnswer {
    fn from(response: &Response) -> StoredAnswer {
        let usage = response.usage;
        StoredAnswer {
            text: response.text.clone(),
            structured: response.structured.clone(),
            usage: StoredUsage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_creation_input_tokens: usage.cache_creation_input_tokens,
                cache_read_input_tokens: usage.cache_read_input_tokens,
            },
            cost_usd: response.cost_usd,
            duration: response.duration,
            num_turns: response.num_turns,
            session_id: response.session_id.clone(),
            api_retries: response.api_retries,
            stop_reason: response.stop_reason.clone(),
            continuations: response.continuations,
            api_calls: response.api_calls,
        }
    }
}

impl StoredAnswer {
    /// The answer as a [`Response`] (not yet marked replayed).
    pub(crate) fn into_response(self) -> Response {
        Response {
            text: self.text,
            structured: self.structured,
            usage: Usage {
                input_tokens: self.usage.input_tokens,
                output_tokens: self.usage.output_tokens,
                cache_creation_input_tokens: self.usage.cache_creation_input_tokens,
                cache_read_input_tokens: self.usage.cache_read_input_tokens,
            },
            cost_usd: self.cost_usd,
            duration: self.duration,
            num_turns: self.num_turns,
            session_id: self.session_id,
            api_retries: self.api_retries,
            stop_reason: self.stop_reason,
            continuations: self.continuations,
            api_calls: self.api_calls,
            replayed: false,
        }
    }
}

/// The line for `record`, newline included.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let body = serde_json::to_string(record).expect("a record always serializes");
    format!(
        "{{\"crc\":\"{:08x}\",\"r\":{body}}}\n",
        crc32(body.as_bytes())
    )
    .into_bytes()
}

/// The record of a line (without its newline), if the line is whole and its checksum holds.
pub(crate) fn decode(line: &[u8]) -> Option<Record> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("{\"crc\":\"")?;
    let (crc, rest) = rest.split_at_checked(8)?;
    let body = rest.strip_prefix("\",\"r\":")?.strip_suffix('}')?;
    // Lower-case hex only, so that each line has one spelling.
    if !crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let stated = u32::from_str_radix(crc, 16).ok()?;
    if crc32(body.as_bytes()) != stated {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// CRC-32 (IEEE 802.3, as zlib and `cksum -a crc32b` compute it).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for byte in bytes {
        crc = TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn keys_differ_with_settings_and_prompt_and_are_stable() {
        let a = Key::of("sonnet", "hello");
        assert_eq!(a, Key::of("sonnet", "hello"));
        assert_ne!(a, Key::of("haiku", "hello"));
        assert_ne!(a, Key::of("sonnet", "hello!"));
        // No shift of text between the parts collides.
        assert_ne!(Key::of("ab", "c"), Key::of("a", "bc"));
        assert_eq!(Key::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Key::from_hex(&a.to_hex().to_uppercase()), None);
        assert_eq!(Key::from_hex(&a.to_hex()[..32]), None);
        // Fixed across versions and documented: SHA-256 of the two lengths (here 0 and 0, as
        // 16 zero bytes) and the two texts; `printf '\0%.0s' {1..16} | sha256sum`.
        assert_eq!(
            Key::of("", "").to_hex(),
            "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb"
        );
    }

    #[test]
    fn a_line_decodes_only_whole_and_unchanged() {
        let record = Record {
            key: Key::of("s", "p").to_hex(),
            answer: Some(StoredAnswer::from(&Response {
                text: "an answer with \"quotes\" and \n a line break".into(),
                cost_usd: 0.25,
                ..Response::default()
            })),
            ..Record::default()
        };
        let line = encode(&record);
        assert!(line.ends_with(b"\n"));
        let body = &line[..line.len() - 1];
        let back = decode(body).expect("whole");
        assert_eq!(back.answer, record.answer);
        // Every cut and every flipped byte is refused.
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_none(), "cut at {cut}");
        }
        for at in 0..body.len() {
            let mut damaged = body.to_vec();
            damaged[at] ^= 0x20;
            if let Some(record) = decode(&damaged) {
                // Only a flip the checksum cannot see (none in practice) would get here.
                panic!("a damaged line decoded: {record:?}");
            }
        }
        // Readable by everyday tools: the line is plain JSON.
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(value["r"]["answer"]["cost_usd"], 0.25);
    }

    /// A line of journal format 2 as written before answers had a type of their own: it must
    /// keep replaying, and a line written now must be the same bytes.
    #[test]
    fn a_written_line_stays_readable_and_the_same() {
        let body = r#"{"key":"374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb","answer":{"text":"Refund approved.","structured":{"amount":42,"verdict":"refund"},"usage":{"input_tokens":120,"output_tokens":30,"cache_creation_input_tokens":2000,"cache_read_input_tokens":4000},"cost_usd":0.0125,"duration":{"secs":2,"nanos":500000000},"num_turns":1,"session_id":"9d3c","api_retries":1,"stop_reason":"end_turn","continuations":1,"api_calls":3}}"#;
        let line = format!(
            "{{\"crc\":\"{:08x}\",\"r\":{body}}}",
            crc32(body.as_bytes())
        );
        let record = decode(line.as_bytes()).expect("the line decodes");
        let answer = record.answer.clone().expect("an answer").into_response();
        assert_eq!(answer.text, "Refund approved.");
        assert_eq!(answer.structured.as_ref().unwrap()["amount"], 42);
        assert_eq!(answer.usage.cache_read_input_tokens, 4000);
        assert_eq!(answer.duration, std::time::Duration::from_millis(2500));
        assert_eq!(
            (answer.api_retries, answer.continuations, answer.api_calls),
            (1, 1, 3)
        );
        assert_eq!(answer.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(encode(&record), format!("{line}\n").into_bytes());
    }
}
