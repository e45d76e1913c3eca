//! Finding the CLI through CLAUDE_CODE_BIN. Alone in its binary: it changes the environment,
//! which must not race with other tests starting processes.

mod support;

use claude_rayon::{CliError, Error, Session, CLI_ENV_VAR};

#[test]
fn cli_is_found_through_the_environment_variable() {
    std::env::set_var(CLI_ENV_VAR, support::fake_cli());
    let session = Session::builder().concurrency(1).build().unwrap();
    assert_eq!(session.cli_path(), Some(support::fake_cli().as_path()));

    std::env::set_var(CLI_ENV_VAR, "/nonexistent/claude");
    let err = Session::builder().build().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Cli(CliError::NotFound { .. })));
    assert!(
        text.contains("/nonexistent/claude") && text.contains("npm install"),
        "{text}"
    );

    // Nothing set and nothing on PATH: every usual place is listed.
    std::env::remove_var(CLI_ENV_VAR);
    std::env::set_var("PATH", "/nonexistent-bin");
    std::env::set_var("HOME", "/nonexistent-home");
    match Session::builder().build().unwrap_err() {
        Error::Cli(CliError::NotFound { searched }) => {
            assert!(
                searched.iter().any(|p| p.starts_with("/nonexistent-home")),
                "{searched:?}"
            );
            assert!(searched.len() >= 4, "{searched:?}");
        }
        other => panic!("{other:?}"),
    }
}
