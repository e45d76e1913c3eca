//! Finding the `claude` executable.

use std::env;
use std::path::{Path, PathBuf};

use crate::{CliError, Error};

/// The environment variable that names the CLI to use when `cli_path` is not set.
pub const CLI_ENV_VAR: &str = "CLAUDE_CODE_BIN";

/// Find the CLI: the explicit path, else `CLAUDE_CODE_BIN`, else `claude` on `PATH`, else the
/// usual install folders. The error lists every place looked at.
pub(crate) fn find_cli(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let mut searched = Vec::new();
    if let Some(path) = explicit {
        if is_executable(path) {
            return Ok(path.to_path_buf());
        }
        searched.push(path.to_path_buf());
        return Err(Error::Cli(CliError::NotFound { searched }));
    }
    if let Some(path) = env::var_os(CLI_ENV_VAR).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        searched.push(path);
        // An explicit setting that is wrong is an error, not a reason to pick another CLI.
        return Err(Error::Cli(CliError::NotFound { searched }));
    }
    if let Some(paths) = env::var_os("PATH") {
        for dir in env::split_paths(&paths) {
            let candidate = dir.join("claude");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        searched.push(PathBuf::from("$PATH"));
    }
    for candidate in usual_install_paths() {
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(Error::Cli(CliError::NotFound { searched }))
}

fn usual_install_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(home) = env::var_os("HOME").map(PathBuf::from) {
        paths.push(home.join(".claude/local/claude"));
        paths.push(home.join(".local/bin/claude"));
        paths.push(home.join(".npm-global/bin/claude"));
        paths.push(home.join("node_modules/.bin/claude"));
        paths.push(home.join(".cache/claude-rayon/npm/node_modules/.bin/claude"));
    }
    paths.push(PathBuf::from("/usr/local/bin/claude"));
    paths.push(PathBuf::from("/opt/homebrew/bin/claude"));
    paths
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_is_reported() {
        let err = find_cli(Some(Path::new("/nonexistent/claude"))).unwrap_err();
        match err {
            Error::Cli(CliError::NotFound { searched }) => {
                assert_eq!(searched, vec![PathBuf::from("/nonexistent/claude")])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_existing_executable_is_used() {
        let found = find_cli(Some(Path::new("/bin/sh"))).unwrap();
        assert_eq!(found, PathBuf::from("/bin/sh"));
    }
}
