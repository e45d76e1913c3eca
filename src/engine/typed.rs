//! Answers parsed into the caller's type (feature `schema`): the session must have been
//! built with that type's schema ([`SessionBuilder::json_schema_of`]); each answer is
//! checked against it and parsed, and one that does not fit is asked once more.
//!
//! [`SessionBuilder::json_schema_of`]: crate::SessionBuilder::json_schema_of

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Policy, Run};
use crate::{Error, Response, Session};

/// The check of answers against `T`, for one run.
pub(crate) struct Typed<T> {
    schema: Value,
    _type: PhantomData<fn() -> T>,
}

impl<T: schemars::JsonSchema + DeserializeOwned> Typed<T> {
    /// The check for `T`, when `session` was built with `T`'s schema; `adaptor` names the
    /// call in the error.
    pub(crate) fn for_session(session: &Session, adaptor: &str) -> Result<Typed<T>, Error> {
        let schema = crate::schema::schema_of::<T>();
        let name = std::any::type_name::<T>();
        match &session.config().spec.json_schema {
            Some(own) if *own == schema => Ok(Typed {
                schema,
                _type: PhantomData,
            }),
            own => Err(Error::InvalidConfig(format!(
                "{adaptor}::<{name}>() needs a session built with json_schema_of::<{name}>(), \
                 so that the model is asked for exactly that shape; this session has {}",
                if own.is_some() {
                    "another json_schema"
                } else {
                    "no json_schema"
                }
            ))),
        }
    }

    /// Whether `response` fits: its structured answer against the schema, then into `T`.
    pub(crate) fn check(&self, response: &Response) -> Result<(), Error> {
        self.parse(response).map(drop)
    }

    /// `response` as a `T`, checked against the schema first (serde alone would let an
    /// answer outside the schema's bounds through).
    pub(crate) fn parse(&self, response: &Response) -> Result<T, Error> {
        let name = std::any::type_name::<T>();
        if let Some(value) = &response.structured {
            crate::schema::validate(&self.schema, value).map_err(|why| {
                Error::StructuredOutputInvalid(format!(
                    "the answer does not fit the schema of {name}: at {why}"
                ))
            })?;
        }
        response.parse::<T>().map_err(|error| match error {
            Error::StructuredOutputInvalid(why) => {
                Error::StructuredOutputInvalid(format!("the answer is not a {name}: {why}"))
            }
            other => other,
        })
    }
}

impl Session {
    /// Run one prompt, as [`query`](Self::query) does, and take its answer as a `T`
    /// (feature `schema`): the session must be built with
    /// [`json_schema_of::<T>()`](crate::SessionBuilder::json_schema_of); the answer is
    /// checked against that schema and parsed, and one that does not fit is asked once more.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the session's schema is not `T`'s,
    /// [`Error::StructuredOutputInvalid`] or [`Error::StructuredOutputMissing`] when the
    /// second answer does not fit either, else whatever [`query`](Self::query) fails with.
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::Session;
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Capital { city: String, population_millions: Option<f64> }
    ///
    /// let session = Session::builder().simulated()?.json_schema_of::<Capital>().build()?;
    /// let capital: Capital = session.query_typed("What is the capital of Portugal?")?;
    /// assert!(!capital.city.is_empty());
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn query_typed<T>(&self, prompt: impl AsRef<str>) -> Result<T, Error>
    where
        T: schemars::JsonSchema + DeserializeOwned,
    {
        let typed = Typed::<T>::for_session(self, "query_typed")?;
        let check = |response: &Response| typed.check(response);
        let run = Run::untracked(self);
        let answer = run
            .answer_one(prompt.as_ref(), &Policy::Typed { check: &check })
            .map_err(|failed| failed.error)?;
        typed.parse(&answer.response)
    }
}
