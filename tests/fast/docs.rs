//! The guides against the code: every call a code span of README.md or docs/*.md names
//! (`system_prompt(..)`, `cli(|c| c.cwd(..))`, `Stats::cache_read_share()`) is a public
//! function of this crate that takes arguments like those shown. The Rust snippets are
//! compiled as doc-tests; the spans between them are prose, and only this test keeps them
//! true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Calls the guides name that are not this crate's (rayon's and std's), so not looked for in
/// `src/`.
const NOT_OURS: &[&str] = &["par_iter", "into_par_iter", "next", "iter", "map"];

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

/// A dependency as a manifest (or the cookbook's block) gives it.
#[derive(Debug, Default, PartialEq)]
struct Dependency {
    version: Option<String>,
    path: Option<String>,
    features: Vec<String>,
    default_features: bool,
}

/// The dependencies of a Cargo manifest's dependency tables (normal, dev and build: a
/// package's doc-tests can use all of them), by name. The inline-table subset Cargo.toml
/// files here use: `name = "1"` or `name = { version = "1", features = [..], .. }`.
fn dependencies(toml: &str) -> BTreeMap<String, Dependency> {
    let mut found = BTreeMap::new();
    let mut in_dependencies = false;
    for line in toml.lines() {
        let line = line.split(" #").next().unwrap().trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_dependencies = matches!(
                line,
                "[dependencies]" | "[dev-dependencies]" | "[build-dependencies]"
            );
            continue;
        }
        if !in_dependencies {
            continue;
        }
        let (name, value) = line.split_once('=').expect("name = value");
        let unquote = |v: &str| v.trim().trim_matches('"').to_string();
        let mut dependency = Dependency {
            default_features: true,
            ..Dependency::default()
        };
        let value = value.trim();
        if let Some(table) = value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            for field in split_top_level(table) {
                let (key, v) = field.split_once('=').expect("key = value");
                match key.trim() {
                    "version" => dependency.version = Some(unquote(v)),
                    "path" => dependency.path = Some(unquote(v)),
                    "features" => {
                        let list = v.trim().trim_start_matches('[').trim_end_matches(']');
                        dependency.features =
                            split_top_level(list).iter().map(|f| unquote(f)).collect();
                        dependency.features.sort();
                    }
                    "default-features" => dependency.default_features = v.trim() == "true",
                    other => panic!("a dependency field this test does not know: {other}"),
                }
            }
        } else {
            dependency.version = Some(unquote(value));
        }
        found.insert(name.trim().to_string(), dependency);
    }
    found
}

/// A recipe of the cookbook: its heading, the crates its "Needs:" line names (with the
/// features named after each, `serde` (with `derive`)), and its Rust code.
struct Recipe {
    heading: String,
    needs: BTreeMap<String, Vec<String>>,
    code: String,
}

fn recipes(page: &str) -> Vec<Recipe> {
    page.split("\n## ")
        .skip(1)
        .map(|section| {
            let heading = section.lines().next().unwrap().to_string();
            let mut needs = BTreeMap::new();
            if let Some(line) = section.lines().find(|l| l.starts_with("Needs:")) {
                for part in split_top_level(line.trim_start_matches("Needs:").trim_end_matches('.'))
                {
                    let mut spans = part.split('`').skip(1).step_by(2);
                    let name = spans.next().expect("a crate in backticks").to_string();
                    let features = spans.map(str::to_string).collect();
                    needs.insert(name, features);
                }
            }
            let code = section
                .split("```rust")
                .skip(1)
                .map(|block| block.split("```").next().unwrap())
                .collect::<Vec<_>>()
                .join("\n");
            Recipe {
                heading,
                needs,
                code,
            }
        })
        .collect()
}

/// The crates a piece of Rust code names (`use rusqlite::..`, `tempfile::tempdir()`), as
/// Cargo spells them (`claude-rayon`), and `serde` when it derives its traits.
fn crates_used(code: &str) -> std::collections::BTreeSet<String> {
    const NOT_CRATES: &[&str] = &[
        "std", "core", "alloc", "crate", "self", "super", "u8", "u16", "u32", "u64", "u128",
        "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32", "f64", "str", "char", "bool",
    ];
    let mut used = std::collections::BTreeSet::new();
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("::") {
        let start = code[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let name = &code[start..i];
        // The first segment of a path: not after `::` and not a type (`Session::builder`).
        let first_segment = start < 2 || &code[start - 2..start] != "::";
        let lowercase = name.starts_with(|c: char| c.is_ascii_lowercase());
        let turbofish = bytes.get(i + 2) == Some(&b'<');
        if first_segment && lowercase && !turbofish && !NOT_CRATES.contains(&name) {
            used.insert(name.replace('_', "-"));
        }
    }
    if code.contains("#[derive(") && (code.contains("Deserialize") || code.contains("Serialize")) {
        used.insert("serde".to_string());
    }
    used
}

#[test]
fn the_cookbook_builds_against_exactly_the_dependencies_it_lists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/cookbook.md")).unwrap();
    let block = page
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the cookbook's dependency block");
    let listed = dependencies(block);
    let manifest =
        dependencies(&std::fs::read_to_string(root.join("crates/cookbook/Cargo.toml")).unwrap());

    // The package that compiles the recipes has exactly the page's dependencies.
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        manifest.keys().collect::<Vec<_>>(),
        "crates/cookbook/Cargo.toml and docs/cookbook.md list different crates"
    );
    for (name, on_page) in &listed {
        let built = &manifest[name];
        assert_eq!(
            (&on_page.features, on_page.default_features),
            (&built.features, built.default_features),
            "{name}: features differ between the page and crates/cookbook/Cargo.toml"
        );
        if name == "claude-rayon" {
            // Built from this repository; the page gives the published version.
            let ours = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
            let version = ours
                .lines()
                .find_map(|l| l.strip_prefix("version = "))
                .unwrap()
                .trim_matches('"');
            let wanted = on_page.version.as_deref().expect("a version on the page");
            assert!(
                version.starts_with(&format!("{wanted}.")),
                "the page asks for claude-rayon {wanted}, this is {version}"
            );
        } else {
            assert_eq!(
                on_page.version, built.version,
                "{name}: versions differ between the page and crates/cookbook/Cargo.toml"
            );
        }
    }

    // Each recipe names what it uses, no more, and all of it is in the block.
    let recipes = recipes(&page);
    assert!(recipes.len() >= 13, "{} recipes found", recipes.len());
    for recipe in &recipes {
        let heading = &recipe.heading;
        assert!(!recipe.code.is_empty(), "{heading}: no Rust code");
        assert!(!recipe.needs.is_empty(), "{heading}: no \"Needs:\" line");
        let needed: std::collections::BTreeSet<String> = recipe.needs.keys().cloned().collect();
        assert_eq!(
            needed,
            crates_used(&recipe.code),
            "{heading}: its \"Needs:\" line and its code name different crates"
        );
        for (name, features) in &recipe.needs {
            let dependency = listed
                .get(name)
                .unwrap_or_else(|| panic!("{heading} needs {name}, not in the page's block"));
            for feature in features {
                assert!(
                    dependency.features.contains(feature),
                    "{heading} needs {name} with {feature}, not in the page's block"
                );
            }
        }
        if recipe.code.contains("#[derive(") {
            assert!(
                recipe
                    .needs
                    .get("serde")
                    .is_some_and(|f| f.contains(&"derive".to_string())),
                "{heading} derives serde's traits: it needs serde with derive"
            );
        }
    }
}

#[test]
fn the_dependency_check_sees_a_crate_a_recipe_does_not_list() {
    let code = "use claude_rayon::Session;\nuse rusqlite::Connection;\nfn main() {\n    let dir = tempfile::tempdir();\n    let n = u64::MAX;\n    let s = Session::builder();\n    let v = x.iter().collect::<Vec<_>>();\n}";
    let used: Vec<String> = crates_used(code).into_iter().collect();
    assert_eq!(used, ["claude-rayon", "rusqlite", "tempfile"]);
    let page = "# Cookbook\n\n## 1. One\n\nNeeds: `claude-rayon`, `serde` (with `derive`).\n\n```rust\n#[derive(Deserialize)]\nstruct A;\n```\n";
    let recipe = &recipes(page)[0];
    assert_eq!(recipe.needs["serde"], ["derive"]);
    assert_eq!(crates_used(&recipe.code).len(), 1);
    let manifest = dependencies(
        "[package]\nname = \"x\"\n[dependencies]\nrayon = \"1\" # why\n[dev-dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\n",
    );
    assert_eq!(manifest["serde"].features, ["derive"]);
    assert_eq!(manifest["rayon"].version.as_deref(), Some("1"));
}
