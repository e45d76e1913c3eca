//! JSON schemas from Rust types (feature `schema`, with schemars), and the check of a
//! structured answer against its schema.
//!
//! The schema goes to two places that read JSON Schema differently: the CLI's
//! `--json-schema` (its `StructuredOutput` tool validates the model's input against it) and
//! the Messages API's forced tool, whose `input_schema` must be an object schema. So it is
//! made self-contained and plain: draft 7, every subschema inlined (a `$ref` remains only
//! for a recursive type, into the schema's own `definitions`), no `$schema` line, and an
//! object type at its root.
//!
//! The check covers what schemars writes: types, `enum`, `const`, `required`, `properties`,
//! `additionalProperties`, `items`, `anyOf` / `oneOf` / `allOf`, numeric bounds, lengths and
//! sizes, `uniqueItems` and local `$ref`s. `pattern` and `format` are not checked (no regex
//! engine here); serde's parse into the type is the final word on the shape.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// The schema of `T`, as the session sends it: see the [module](self).
pub(crate) fn schema_of<T: schemars::JsonSchema + ?Sized>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|settings| {
            settings.inline_subschemas = true;
            // An old validator refuses a meta-schema it does not know; nothing needs it.
            settings.meta_schema = None;
        })
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    without_formats(&mut schema);
    // An enum of objects (`oneOf` of objects) is an object too: say so at the root, which
    // the Messages API requires of a tool's input.
    if let Some(root) = schema.as_object_mut() {
        if root.get("type").is_none() && alternatives_are_objects(root) {
            root.insert("type".into(), Value::from("object"));
        }
    }
    schema
}

/// Take every `format` out of `schema`: the CLI 2.1.197 drops its `StructuredOutput` tool,
/// silently, for a schema with any `format` in it (schemars writes `uint8`, `int32`,
/// `double` for numbers, measured: every answer then fails after five calls). A string
/// format the model should know (`date-time`, `email`, ...) moves into the description.
fn without_formats(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::String(format)) = object.remove("format") {
        let numeric = ["int", "uint", "float", "double"]
            .iter()
            .any(|n| format.starts_with(n));
        if !numeric {
            let note = format!("Format: {format}.");
            let description = match object.get("description").and_then(Value::as_str) {
                Some(text) => format!("{text} {note}"),
                None => note,
            };
            object.insert("description".into(), Value::from(description));
        }
    }
    // Subschemas, and only they: a field may well be called `format`.
    for key in [
        "items",
        "additionalProperties",
        "additionalItems",
        "not",
        "contains",
    ] {
        if let Some(sub) = object.get_mut(key) {
            match sub {
                Value::Array(subs) => subs.iter_mut().for_each(without_formats),
                sub => without_formats(sub),
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(subs)) = object.get_mut(key) {
            subs.iter_mut().for_each(without_formats);
        }
    }
    for key in ["properties", "definitions", "$defs", "patternProperties"] {
        if let Some(Value::Object(subs)) = object.get_mut(key) {
            subs.values_mut().for_each(without_formats);
        }
    }
}

/// Whether `schema`'s root says it is an object, as both backends need.
pub(crate) fn is_object_schema(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        _ => false,
    }
}

fn alternatives_are_objects(root: &Map<String, Value>) -> bool {
    ["oneOf", "anyOf"].iter().any(|key| {
        root.get(*key)
            .and_then(Value::as_array)
            .is_some_and(|alts| !alts.is_empty() && alts.iter().all(is_object_schema))
    })
}

/// Check `value` against `schema`; the error names where (a JSON pointer) and why.
pub(crate) fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    let mut checker = Checker { root: schema };
    checker.check(schema, value, &mut String::new(), 0)
}

/// How deep `$ref`s may nest before a schema is taken as broken (a reference loop).
const MAX_DEPTH: usize = 64;

struct Checker<'a> {
    root: &'a Value,
}

impl<'a> Checker<'a> {
    fn check(
        &mut self,
        schema: &'a Value,
        value: &Value,
        at: &mut String,
        depth: usize,
    ) -> Result<(), String> {
        let fail =
            |at: &str, why: String| Err(format!("{}: {why}", if at.is_empty() { "/" } else { at }));
        if depth > MAX_DEPTH {
            return fail(at, "the schema nests too deeply".into());
        }
        let schema = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return fail(at, "no value is allowed here".into()),
            Value::Object(schema) => schema,
            _ => return Ok(()),
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let Some(target) = reference
                .strip_prefix('#')
                .and_then(|pointer| self.root.pointer(pointer))
            else {
                return fail(
                    at,
                    format!("the schema's reference {reference} is not in it"),
                );
            };
            self.check(target, value, at, depth + 1)?;
        }
        if let Some(types) = schema.get("type") {
            let allowed: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
                return fail(
                    at,
                    format!("{} is not of type {}", shown(value), allowed.join(" or ")),
                );
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                let options: Vec<String> = options.iter().map(shown).collect();
                return fail(
                    at,
                    format!("{} is not one of {}", shown(value), options.join(", ")),
                );
            }
        }
        if let Some(constant) = schema.get("const") {
            if constant != value {
                return fail(at, format!("{} is not {}", shown(value), shown(constant)));
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.check(sub, value, at, depth + 1)?;
            }
        }
        for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            let Some(alts) = schema.get(key).and_then(Value::as_array) else {
                continue;
            };
            let mut errors = Vec::new();
            let mut fits = 0;
            for sub in alts {
                match self.check(sub, value, &mut at.clone(), depth + 1) {
                    Ok(()) => fits += 1,
                    Err(why) => errors.push(why),
                }
            }
            if fits == 0 {
                // The alternatives of another type say little: when only one had the
                // value's type, its own error is the one that explains.
                let here = format!("{}: ", if at.is_empty() { "/" } else { at.as_str() });
                let mut closer: Vec<String> = errors
                    .iter()
                    .filter(|e| !(e.starts_with(&here) && e.contains(" is not of type ")))
                    .cloned()
                    .collect();
                if closer.len() == 1 {
                    return Err(closer.remove(0));
                }
                let closest = errors.into_iter().next().unwrap_or_default();
                return fail(
                    at,
                    format!(
                        "{} fits none of the alternatives (first: {closest})",
                        shown(value)
                    ),
                );
            }
            if exactly_one && fits > 1 {
                return fail(
                    at,
                    format!("{} fits {fits} alternatives, not exactly one", shown(value)),
                );
            }
        }
        match value {
            Value::Number(n) => self.check_number(schema, n, at)?,
            Value::String(s) => {
                let chars = s.chars().count() as u64;
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                    if chars < min {
                        return fail(
                            at,
                            format!("{} is shorter than {min} characters", shown(value)),
                        );
                    }
                }
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                    if chars > max {
                        return fail(
                            at,
                            format!("{} is longer than {max} characters", shown(value)),
                        );
                    }
                }
            }
            Value::Array(items) => self.check_array(schema, items, at, depth)?,
            Value::Object(object) => self.check_object(schema, object, at, depth)?,
            Value::Bool(_) | Value::Null => {}
        }
        Ok(())
    }

    fn check_number(
        &self,
        schema: &Map<String, Value>,
        n: &serde_json::Number,
        at: &str,
    ) -> Result<(), String> {
        let Some(x) = n.as_f64() else { return Ok(()) };
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        let why = if bound("minimum").is_some_and(|m| x < m) {
            format!(
                "{n} is below the minimum {}",
                bound("minimum").unwrap_or_default()
            )
        } else if bound("maximum").is_some_and(|m| x > m) {
            format!(
                "{n} is above the maximum {}",
                bound("maximum").unwrap_or_default()
            )
        } else if bound("exclusiveMinimum").is_some_and(|m| x <= m) {
            format!(
                "{n} is not above {}",
                bound("exclusiveMinimum").unwrap_or_default()
            )
        } else if bound("exclusiveMaximum").is_some_and(|m| x >= m) {
            format!(
                "{n} is not below {}",
                bound("exclusiveMaximum").unwrap_or_default()
            )
        } else if bound("multipleOf").is_some_and(|m| m > 0.0 && (x / m).fract() != 0.0) {
            format!(
                "{n} is not a multiple of {}",
                bound("multipleOf").unwrap_or_default()
            )
        } else {
            return Ok(());
        };
        Err(format!("{}: {why}", if at.is_empty() { "/" } else { at }))
    }

    fn check_array(
        &mut self,
        schema: &'a Map<String, Value>,
        items: &[Value],
        at: &mut String,
        depth: usize,
    ) -> Result<(), String> {
        let here = if at.is_empty() {
            "/".to_string()
        } else {
            at.clone()
        };
        let len = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if len < min {
                return Err(format!("{here}: {len} items, fewer than {min}"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if len > max {
                return Err(format!("{here}: {len} items, more than {max}"));
            }
        }
        if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
            let distinct: BTreeSet<String> = items.iter().map(Value::to_string).collect();
            if distinct.len() != items.len() {
                return Err(format!("{here}: the items are not all different"));
            }
        }
        // `items` is one schema for all, or (draft 7 tuples) one per position.
        let per_item: Box<dyn Fn(usize) -> Option<&'a Value>> = match schema.get("items") {
            Some(Value::Array(positions)) => {
                let extra = schema.get("additionalItems");
                Box::new(move |i| positions.get(i).or(extra))
            }
            Some(all) => Box::new(move |_| Some(all)),
            None => Box::new(|_| None),
        };
        for (i, item) in items.iter().enumerate() {
            if let Some(sub) = per_item(i) {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                let checked = self.check(sub, item, at, depth + 1);
                at.truncate(len);
                checked?;
            }
        }
        Ok(())
    }

    fn check_object(
        &mut self,
        schema: &'a Map<String, Value>,
        object: &Map<String, Value>,
        at: &mut String,
        depth: usize,
    ) -> Result<(), String> {
        let here = if at.is_empty() {
            "/".to_string()
        } else {
            at.clone()
        };
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{here}: the field {name:?} is missing"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (name, field) in object {
            let sub = match properties.and_then(|p| p.get(name)) {
                Some(sub) => sub,
                None => match additional {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{here}: the field {name:?} is not in the schema"));
                    }
                    Some(sub) => sub,
                    None => continue,
                },
            };
            let len = at.len();
            at.push('/');
            // A JSON pointer escapes `~` and `/` in a name.
            at.push_str(&name.replace('~', "~0").replace('/', "~1"));
            let checked = self.check(sub, field, at, depth + 1);
            at.truncate(len);
            checked?;
        }
        Ok(())
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|x| x.fract() == 0.0)
            }
            _ => false,
        },
        _ => true,
    }
}

/// A value as an error shows it: whole when short.
fn shown(value: &Value) -> String {
    crate::error::shorten(&value.to_string(), 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(dead_code)]
    #[derive(schemars::JsonSchema, serde::Deserialize)]
    enum Priority {
        Low,
        High,
    }

    #[allow(dead_code)]
    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ticket {
        /// What the ticket is about.
        summary: String,
        priority: Priority,
        assignee: Option<String>,
        tags: Vec<String>,
        #[schemars(range(min = 1, max = 5))]
        severity: u8,
        related: Option<Box<Ticket>>,
    }

    #[allow(dead_code)]
    #[derive(schemars::JsonSchema)]
    #[serde(tag = "kind")]
    enum Event {
        Opened { by: String },
        Closed { reason: String },
    }

    fn ticket() -> Value {
        json!({"summary": "Refund twice", "priority": "High", "assignee": null,
               "tags": ["billing"], "severity": 3, "related": null})
    }

    #[test]
    fn a_struct_schema_is_a_plain_object_schema_without_meta_or_refs_but_for_recursion() {
        let schema = schema_of::<Ticket>();
        assert!(is_object_schema(&schema), "{schema:#}");
        assert!(schema.get("$schema").is_none());
        let text = schema.to_string();
        // `Priority` is inlined; only the recursive `Ticket` is a reference.
        assert!(
            text.contains("\"Low\"") && text.contains("\"High\""),
            "{text}"
        );
        assert!(!text.contains("definitions/Priority"), "{text}");
        assert_eq!(validate(&schema, &ticket()), Ok(()));
    }

    #[test]
    fn formats_are_taken_out_and_a_string_format_is_told_in_the_description() {
        #[allow(dead_code)]
        #[derive(schemars::JsonSchema)]
        struct Reading {
            /// When it was read.
            #[schemars(extend("format" = "date-time"))]
            at: String,
            format: Vec<f64>,
            count: u8,
        }
        let schema = schema_of::<Reading>();
        assert!(!schema.to_string().contains("\"format\":\""), "{schema:#}");
        assert_eq!(
            schema["properties"]["at"]["description"],
            "When it was read. Format: date-time."
        );
        // A field called `format` is a field, not a keyword.
        assert_eq!(schema["properties"]["format"]["type"], "array");
        assert_eq!(schema["properties"]["count"]["maximum"], 255);
    }

    #[test]
    fn answers_that_do_not_fit_say_where_and_why() {
        let schema = schema_of::<Ticket>();
        let with = |pointer: &str, v: Value| {
            let mut t = ticket();
            *t.pointer_mut(pointer).unwrap() = v;
            validate(&schema, &t).unwrap_err()
        };
        assert!(with("/priority", json!("Urgent")).starts_with("/priority: \"Urgent\""));
        assert!(with("/severity", json!(7)).contains("above the maximum 5"));
        assert!(with("/tags", json!([1])).starts_with("/tags/0: 1 is not of type string"));
        assert!(with("/assignee", json!(3)).starts_with("/assignee"));
        let mut t = ticket();
        t.as_object_mut().unwrap().remove("summary");
        assert!(validate(&schema, &t)
            .unwrap_err()
            .contains("\"summary\" is missing"));
        let mut t = ticket();
        t["extra"] = json!(1);
        assert!(validate(&schema, &t)
            .unwrap_err()
            .contains("\"extra\" is not in the schema"));
        // Through the recursive reference too.
        let mut t = ticket();
        t["related"] = ticket();
        t["related"]["severity"] = json!(0);
        assert!(validate(&schema, &t)
            .unwrap_err()
            .starts_with("/related/severity"));
    }

    #[test]
    fn an_enum_of_objects_is_an_object_at_its_root_and_other_types_are_not() {
        let schema = schema_of::<Event>();
        assert!(is_object_schema(&schema), "{schema:#}");
        assert_eq!(
            validate(&schema, &json!({"kind": "Opened", "by": "ana"})),
            Ok(())
        );
        assert!(validate(&schema, &json!({"kind": "Merged"})).is_err());
        assert!(!is_object_schema(&schema_of::<Priority>()));
        assert!(!is_object_schema(&schema_of::<Vec<String>>()));
    }

    #[test]
    fn a_reference_loop_or_a_missing_target_is_an_error_not_a_hang() {
        let looped =
            json!({"definitions": {"a": {"$ref": "#/definitions/a"}}, "$ref": "#/definitions/a"});
        assert!(validate(&looped, &json!(1))
            .unwrap_err()
            .contains("too deeply"));
        let missing = json!({"$ref": "#/definitions/nowhere"});
        assert!(validate(&missing, &json!(1))
            .unwrap_err()
            .contains("not in it"));
    }
}
