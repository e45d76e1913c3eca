//! Strict answers: a verdict or a category must be exactly one allowed token.
//!
//! A model's free text is not a verdict: "not found" contains "found", "Yes and no" starts with
//! "yes". So the library appends a short instruction listing the allowed answers, and accepts
//! an answer only if, with case, surrounding white space, quotes, Markdown emphasis and
//! trailing punctuation removed, it *is* one of them. An answer outside the set gets one fresh
//! re-prompt that quotes it and repeats the set; a second bad answer fails the item with
//! [`Error::InvalidAnswer`], quoting what the model said.

use crate::error::shorten;
use crate::{Error, Session};

/// The line that lists the allowed answers at the end of a strict prompt. The simulator reads
/// it to give demo answers (its own copy of this text: it knows nothing of the engine).
pub(crate) const ALLOWED_PREFIX: &str = "Allowed answers: ";

/// The prompt with the instruction and the allowed answers after it.
pub(crate) fn instruction(prompt: &str, allowed: &[String]) -> String {
    format!(
        "{prompt}\n\nReply with exactly one of the allowed answers below and nothing else: \
         no explanation, no other words.\n{ALLOWED_PREFIX}{}",
        allowed.join(" | ")
    )
}

/// The re-prompt after an answer outside the set: fresh context, so it repeats the question.
pub(crate) fn reminder(prompt: &str, bad_answer: &str, allowed: &[String]) -> String {
    format!(
        "{prompt}\n\nAn earlier reply to this was {:?}, which is not an allowed answer. \
         Reply with exactly one of the allowed answers below and nothing else.\n{ALLOWED_PREFIX}{}",
        shorten(bad_answer.trim(), 200),
        allowed.join(" | ")
    )
}

/// Case, surrounding white space, quotes, Markdown emphasis and punctuation aside.
pub(crate) fn normalize(answer: &str) -> String {
    answer
        .trim()
        .trim_matches(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '.' | '!'
                        | ','
                        | ';'
                        | ':'
                        | '"'
                        | '\''
                        | '`'
                        | '*'
                        | '_'
                        | '('
                        | ')'
                        | '['
                        | ']'
                        | '“'
                        | '”'
                        | '‘'
                        | '’'
                )
        })
        .to_lowercase()
}

/// Which allowed answer (by index) the reply is, if exactly one.
pub(crate) fn match_answer(answer: &str, allowed: &[String]) -> Option<usize> {
    let answer = normalize(answer);
    if answer.is_empty() {
        return None;
    }
    allowed.iter().position(|a| normalize(a) == answer)
}

/// The error of an item whose re-prompted answer was still not allowed.
pub(crate) fn invalid(answer: &str, allowed: &[String]) -> Error {
    Error::InvalidAnswer {
        answer: shorten(answer.trim(), 200),
        allowed: allowed.to_vec(),
    }
}

/// Refuse sessions whose answers are bound to the user's own JSON schema.
pub(crate) fn check_session(session: &Session, adaptor: &str) -> Result<(), Error> {
    if session.config().spec.json_schema.is_some() {
        return Err(Error::InvalidConfig(format!(
            "{adaptor} needs plain-text answers, but this session was built with a json_schema \
             (which belongs to your own answers); use a session without json_schema"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes_no() -> Vec<String> {
        vec!["yes".into(), "no".into()]
    }

    #[test]
    fn accepts_one_allowed_token_with_case_and_punctuation_aside() {
        let allowed = yes_no();
        for (answer, want) in [
            ("Yes.", Some(0)),
            ("NO", Some(1)),
            (" yes\n", Some(0)),
            ("**No**", Some(1)),
            ("\"yes\"", Some(0)),
            ("`no`!", Some(1)),
            ("Yes and no", None),
            ("Yes, because it is", None),
            ("not yes", None),
            ("y", None),
            ("", None),
            ("I cannot determine that.", None),
            ("maybe", None),
        ] {
            assert_eq!(match_answer(answer, &allowed), want, "{answer:?}");
        }
    }

    #[test]
    fn categories_match_whole_names_only() {
        let allowed: Vec<String> = vec!["Bug report".into(), "Feature".into(), "found".into()];
        assert_eq!(match_answer("bug report", &allowed), Some(0));
        assert_eq!(match_answer("FEATURE.", &allowed), Some(1));
        assert_eq!(match_answer("not found", &allowed), None);
        assert_eq!(match_answer("Bug", &allowed), None);
        assert_eq!(match_answer("feature request", &allowed), None);
    }

    #[test]
    fn prompts_end_with_the_allowed_line() {
        let p = instruction("Is it red?", &yes_no());
        assert!(p.starts_with("Is it red?"));
        assert!(p.ends_with("Allowed answers: yes | no"));
        let r = reminder("Is it red?", "Perhaps, yes", &yes_no());
        assert!(r.contains("\"Perhaps, yes\"") && r.ends_with("Allowed answers: yes | no"));
    }
}
