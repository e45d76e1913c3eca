//! The guides against the code: every call a code span of README.md or docs/*.md names
//! (`system_prompt(..)`, `cli(|c| c.cwd(..))`, `Stats::cache_read_share()`) is a public
//! function of this crate that takes arguments like those shown. The Rust snippets are
//! compiled as doc-tests; the spans between them are prose, and only this test keeps them
//! true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Calls the guides name that are not this crate's (rayon's and std's), so not looked for in
/// `src/`.
const NOT_OURS: &[&str] = &["par_iter", "into_par_iter", "next"];

/// One public function of the crate: the type or trait whose `impl` (or definition) holds it
/// (`None` for a free function), and its parameters' types, `self` left out.
#[derive(Debug, Clone)]
struct Function {
    owner: Option<String>,
    params: Vec<String>,
}

/// Every public function and method in `src/`, by name.
fn public_functions() -> BTreeMap<String, Vec<Function>> {
    let mut found: BTreeMap<String, Vec<Function>> = BTreeMap::new();
    for file in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        read_functions(&text, &mut found);
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The functions of one file. rustfmt'd code opens an item at the start of a line and closes
/// it with `}` there, so the owner of a function is the last `impl`/`trait` line at column 0
/// before it. In an inherent `impl`, only `pub fn` is public; in a trait or a trait's `impl`
/// (of a public type), every `fn` is.
fn read_functions(text: &str, found: &mut BTreeMap<String, Vec<Function>>) {
    // (owner, whether every fn in it is public)
    let mut owner: Option<(String, bool)> = None;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('}') {
            owner = None;
            continue;
        }
        if let Some(item) = item_owner(line) {
            owner = Some(item);
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let (public_only, owner_name) = match &owner {
            Some((name, all_public)) => (!all_public, Some(name.clone())),
            None => (true, None),
        };
        // Free functions at column 0 only (not those of a test module).
        if owner.is_none() && indent > 0 {
            continue;
        }
        let rest = if let Some(rest) = trimmed.strip_prefix("pub fn ") {
            rest
        } else if let Some(rest) = trimmed.strip_prefix("pub const fn ") {
            rest
        } else if let Some(rest) = trimmed.strip_prefix("fn ").filter(|_| !public_only) {
            rest
        } else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The signature may span lines: from the name to its body or `;`.
        let mut signature = rest[name.len()..].to_string();
        let mut next = i + 1;
        while !signature.contains('{') && !signature.contains(';') && next < lines.len() {
            signature.push(' ');
            signature.push_str(lines[next].trim());
            next += 1;
        }
        found.entry(name).or_default().push(Function {
            owner: owner_name,
            params: parameters(&signature),
        });
    }
}

/// `impl<..> Type<..>`, `impl<..> Trait for Type<..>` or `pub trait Name` at column 0: the
/// type (or trait) and whether all its functions are public.
fn item_owner(line: &str) -> Option<(String, bool)> {
    if let Some(rest) = line.strip_prefix("pub trait ") {
        return Some((identifier(rest), true));
    }
    let rest = line.strip_prefix("impl")?;
    let rest = if rest.starts_with('<') {
        &rest[matching(rest, 0)? + 1..]
    } else {
        rest
    };
    let rest = rest.trim_start();
    match rest.split_once(" for ") {
        Some((_, ty)) => Some((identifier(ty.trim_start()), true)),
        None => Some((identifier(rest), false)),
    }
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The index of the bracket that closes the one at `open`.
fn matching(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'(' | b'[' | b'{' | b'<' => depth += 1,
            // `->` is not a bracket.
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b')' | b']' | b'}' | b'>' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Split at the commas outside brackets and outside a closure's parameters (`|a, b| ..`).
fn split_top_level(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    let mut closure_params = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'|' if closure_params => closure_params = false,
            b'|' if depth == 0 && text[start..i].trim().is_empty() => closure_params = true,
            _ if closure_params => {}
            b'(' | b'[' | b'{' | b'<' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b')' | b']' | b'}' | b'>' => depth -= 1,
            b',' if depth == 0 => {
                parts.push(text[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = text[start..].trim();
    if !last.is_empty() {
        parts.push(last.to_string());
    }
    parts
}

/// The parameters' types of a signature that starts after the function's name (generics,
/// then the parameter list), `self` left out.
fn parameters(signature: &str) -> Vec<String> {
    let start = if signature.starts_with('<') {
        matching(signature, 0).map_or(0, |end| end + 1)
    } else {
        0
    };
    let Some(open) = signature[start..].find('(').map(|i| i + start) else {
        return Vec::new();
    };
    let Some(close) = matching(signature, open) else {
        return Vec::new();
    };
    split_top_level(&signature[open + 1..close])
        .into_iter()
        .filter(|p| {
            let p = p.trim_start_matches('&').trim_start_matches("mut ");
            p != "self" && !p.starts_with("self:") && !p.starts_with("'")
        })
        .map(|p| match p.split_once(':') {
            Some((_, ty)) => ty.trim().to_string(),
            None => p,
        })
        .filter(|p| !p.is_empty() && !p.starts_with("mut self") && !p.ends_with("self"))
        .collect()
}

/// The inline code spans of a Markdown text, outside fenced blocks.
fn code_spans(markdown: &str) -> Vec<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            prose.push('\n');
            continue;
        }
        if !fenced {
            prose.push_str(line);
        }
        prose.push('\n');
    }
    // A span may wrap onto the next line.
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|span| span.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// A call a span names: the function, the types its receiver may be (none known: any), and
/// the arguments as written.
#[derive(Debug)]
struct Call {
    name: String,
    receiver: Option<String>,
    args: String,
}

/// The calls in a span, with what is known of each one's receiver: `Type::name(..)`, or a
/// method called on the parameter of a configuring closure (`cli(|c| c.cwd(..))`, whose
/// parameter's type comes from `cli`'s signature).
fn calls(span: &str, functions: &BTreeMap<String, Vec<Function>>) -> Vec<Call> {
    let mut out = Vec::new();
    collect_calls(span, None, functions, &mut out);
    out
}

fn collect_calls(
    text: &str,
    closure_param: Option<(&str, &str)>,
    functions: &BTreeMap<String, Vec<Function>>,
    out: &mut Vec<Call>,
) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_identifier = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts_identifier {
            i += 1;
            continue;
        }
        let name = identifier(&text[i..]);
        let end = i + name.len();
        if bytes.get(end) != Some(&b'(') || name.starts_with(char::is_uppercase) {
            i = end;
            continue;
        }
        let Some(close) = matching(text, end) else {
            return;
        };
        let args = &text[end + 1..close];
        let before = &text[..i];
        let receiver = if let Some(path) = before.strip_suffix("::") {
            let owner = path
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default();
            owner
                .starts_with(char::is_uppercase)
                .then(|| owner.to_string())
        } else if let Some((param, ty)) = closure_param {
            // `c.name(` or a call chained on one (`c.a(..).b(..)`): a builder's methods
            // return it.
            let chained = before.ends_with(&format!("{param}."))
                || (before.ends_with(").") && before.contains(&format!("{param}.")));
            chained.then(|| ty.to_string())
        } else {
            None
        };
        out.push(Call {
            name: name.clone(),
            receiver,
            args: args.to_string(),
        });
        // A closure argument: `|x| body`, whose `x` may be typed by this function.
        let closure = args
            .trim_start()
            .strip_prefix('|')
            .and_then(|rest| rest.split_once('|'));
        match closure {
            Some((param, body)) if !param.contains(',') => {
                let ty = closure_parameter_type(&name, functions);
                collect_calls(
                    body,
                    ty.as_deref().map(|ty| (param.trim(), ty)),
                    functions,
                    out,
                );
            }
            _ => collect_calls(args, closure_param, functions, out),
        }
        i = close + 1;
    }
}

/// The type a function's closure parameter gets: `cli(configure: impl FnOnce(CliOptions) ->
/// CliOptions)` gives `CliOptions`.
fn closure_parameter_type(
    name: &str,
    functions: &BTreeMap<String, Vec<Function>>,
) -> Option<String> {
    functions.get(name)?.iter().find_map(|f| {
        let param = f.params.first()?;
        let (_, after) = param.split_once("FnOnce(")?;
        let ty = identifier(after.trim_start_matches('&'));
        (!ty.is_empty()).then_some(ty)
    })
}

/// Whether an argument as written could be passed for a parameter of type `ty`. Only
/// literals are judged; anything else (`..`, a variable, a closure) could be right.
fn fits(arg: &str, ty: &str) -> bool {
    let arg = arg.trim();
    let numeric = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64",
    ];
    let is_generic = ty.len() <= 2 && ty.starts_with(char::is_uppercase);
    if is_generic {
        return true;
    }
    if arg == "None" || arg.starts_with("Some(") {
        ty.contains("Option")
    } else if arg == "true" || arg == "false" {
        ty == "bool"
    } else if arg.starts_with(|c: char| c.is_ascii_digit())
        && arg
            .chars()
            .all(|c| c.is_ascii_digit() || c == '_' || c == '.')
    {
        let floats = arg.contains('.');
        numeric
            .iter()
            .filter(|n| !floats || n.starts_with('f'))
            .any(|n| ty == *n || ty.contains(&format!("<{n}>")))
    } else if arg.starts_with('"') {
        [
            "str",
            "String",
            "Path",
            "OsStr",
            "impl Into<",
            "impl AsRef<",
        ]
        .iter()
        .any(|t| ty.contains(t))
    } else {
        true
    }
}

/// Whether a call as written could be one to `f`.
fn call_fits(call: &Call, f: &Function) -> bool {
    if call.receiver.is_some() && f.owner != call.receiver {
        return false;
    }
    let args = call.args.trim();
    if args == ".." {
        return true;
    }
    let args = split_top_level(args);
    args.len() == f.params.len() && args.iter().zip(&f.params).all(|(a, ty)| fits(a, ty))
}

/// A span that is a formula, not code (`min(max_backoff, initial_backoff × 2^(n-1))`).
fn is_formula(span: &str) -> bool {
    span.contains(['×', '^', '⌈', '−'])
}

fn guides() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// What is wrong with each call the guides' code spans name, one line each, and how many
/// calls were checked.
fn wrong_calls(guides: &[(String, String)]) -> (Vec<String>, usize) {
    let functions = public_functions();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (file, text) in guides {
        for span in code_spans(text) {
            if is_formula(&span) {
                continue;
            }
            for call in calls(&span, &functions) {
                if NOT_OURS.contains(&call.name.as_str()) {
                    continue;
                }
                checked += 1;
                let Some(candidates) = functions.get(&call.name) else {
                    wrong.push(format!(
                        "{file}: `{span}`: no public fn `{}` in src/",
                        call.name
                    ));
                    continue;
                };
                if !candidates.iter().any(|f| call_fits(&call, f)) {
                    wrong.push(format!(
                        "{file}: `{span}`: `{}({})` fits none of {:?}",
                        call.name, call.args, candidates
                    ));
                }
            }
        }
    }
    (wrong, checked)
}

#[test]
fn every_call_a_guide_names_exists_and_takes_such_arguments() {
    let (wrong, checked) = wrong_calls(&guides());
    // The guides name about a hundred calls: far fewer means the spans were not found.
    assert!(checked > 60, "only {checked} calls found in the guides");
    assert!(
        wrong.is_empty(),
        "code spans in the guides that name no call of this crate:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_span_check_finds_what_does_not_compile() {
    let guide = |text: &str| vec![("test.md".to_string(), text.to_string())];
    // Calls that exist, as the guides write them.
    for good in [
        "Set `system_prompt(..)` or `cli(|c| c.cli_system_prompt())`.",
        "`cli(|c| c.recycle_after_items(None).recycle_above_memory(None))`",
        "`SessionBuilder::progress(true)` and `Stats::cache_read_share()`",
        "`claude_windows(&session, size, step, prompt_fn)`, `min(a × 2^(n-1))`",
        "`api(|a| a.max_tokens(..))` and `.par_iter()`",
        "`.transform(|item, response| value)` and `claude_map(&s, prompt_fn)`",
    ] {
        let (wrong, checked) = wrong_calls(&guide(good));
        assert_eq!(wrong, Vec::<String>::new(), "{good}");
        assert!(checked >= 1, "{good}");
    }
    // Each of these does not compile, and is found.
    for bad in [
        "`system_prompt(None)` restores the CLI's own",
        "`cli(|c| c.no_such_option(..))`",
        "`Stats::close()`",
        "`cli(|c| c.fresh_process_per_item(8))`",
        "`session.close(true)`",
        "`api(|a| a.cwd(..))`",
    ] {
        assert_eq!(wrong_calls(&guide(bad)).0.len(), 1, "{bad} was not found");
    }
}
