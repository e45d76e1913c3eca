//! Strict answers: a verdict or a category must be exactly one allowed token.

/// The line that lists the allowed answers at the end of a strict prompt.
pub(crate) const ALLOWED_PREFIX: &str = "Allowed answers: ";
