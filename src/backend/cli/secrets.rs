//! Keeping credentials out of everything we show: errors, logs, `Debug` output.

/// Environment keys whose values are never shown.
const SECRET_HINTS: &[&str] = &["KEY", "TOKEN", "SECRET", "PASSWORD", "AUTH", "CREDENTIAL"];

/// Whether an environment variable of this name holds a credential.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    SECRET_HINTS.iter().any(|hint| upper.contains(hint))
}

/// Replace every secret in `text` with a marker.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[REDACTED]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_by_name_and_redacted() {
        assert!(is_secret_key("ANTHROPIC_API_KEY") && is_secret_key("my_auth_token"));
        assert!(!is_secret_key("HOME"));
        let secrets = vec!["sk-ant-very-secret".to_string()];
        assert_eq!(
            redact("key=sk-ant-very-secret!", &secrets),
            "key=[REDACTED]!"
        );
    }
}
