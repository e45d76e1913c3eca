//! Tells the tests whether a real `claude` CLI was given: without `CLAUDE_CODE_BIN` pointing
//! at one, the real-CLI tests are compiled as ignored, so the test summary shows them as
//! skipped (with how to run them) rather than as passed. The library itself does not use it.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(claude_rayon_no_cli)");
    println!("cargo::rerun-if-env-changed=CLAUDE_CODE_BIN");
    println!("cargo::rerun-if-env-changed=CLAUDE_RAYON_REQUIRE_REAL_CLI");
    let cli = std::env::var_os("CLAUDE_CODE_BIN").map(PathBuf::from);
    if let Some(cli) = &cli {
        // Installed or removed later: look again.
        println!("cargo::rerun-if-changed={}", cli.display());
    }
    let given = cli.is_some_and(|path| path.is_file());
    // CI demands the real tier: never ignore it there, so a missing CLI fails loudly.
    let required = std::env::var("CLAUDE_RAYON_REQUIRE_REAL_CLI").is_ok_and(|v| v == "1");
    if !given && !required {
        println!("cargo::rustc-cfg=claude_rayon_no_cli");
    }
}
