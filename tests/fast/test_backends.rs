//! The two-backend harness itself (tests/support/backends.rs): the mock API answers the
//! simulator's directives as documented, a hung reply ends with its test, a CLI-only
//! directive fails an API test, and a failure names its backend.

use crate::support;

use std::time::Duration;

use claude_rayon::Error;
use serde_json::json;
use support::backends::{run_on, Kind, TestBackend};

/// The message of the panic `f` ends with.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err("the body was meant to fail");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn the_mock_api_answers_the_directives_as_the_simulator_does() {
    let b = TestBackend::new(Kind::Api);
    let session = support::one_at_a_time_retrying(b.builder(), 0);
    let text = |prompt: &str| session.query(prompt).unwrap().text;
    let status = |prompt: &str| session.query(prompt).unwrap_err().api_status();
    let plain = "Please summarise the attached meeting notes for the team.";
    assert_eq!(text(plain), format!("echo: {plain}"));
    assert_eq!(
        text("[[sim:reply=Approved.]] Is this refund fine?"),
        "Approved."
    );
    assert_eq!(text("[[sim:delay=20]] [[sim:reply=Late.]] q"), "Late.");
    assert_eq!(text("[[sim:huge=5000]] q"), "z".repeat(5000));
    let replies = "[[sim:replies=k,first|second]] q";
    assert_eq!(
        (text(replies), text(replies), text(replies)),
        ("first".into(), "second".into(), "second".into())
    );
    for code in [429, 529, 500, 400] {
        assert_eq!(status(&format!("[[sim:error={code}]] q")), Some(code));
    }
    assert!(matches!(
        session.query("[[sim:error=401]] q"),
        Err(Error::Authentication { .. })
    ));
    let cut = session.query("[[sim:error=none]] q").unwrap_err();
    assert!(matches!(cut, Error::Api { status: None, .. }), "{cut:?}");
    let flaky = "[[sim:fail-times=f,2,500]] q";
    assert_eq!((status(flaky), status(flaky)), (Some(500), Some(500)));
    assert_eq!(text(flaky), format!("echo: {flaky}"));
    assert!(matches!(
        session.query("[[sim:stop=refusal]] q"),
        Err(Error::Refused { .. })
    ));

    let structured = support::one_at_a_time(
        b.builder()
            .json_schema(json!({"type": "object", "properties": {"n": {"type": "integer"}}})),
    );
    let given = structured.query("[[sim:structured={\"n\":7}]] q").unwrap();
    assert_eq!(given.structured, Some(json!({"n": 7})));
    let made = structured.query("Score this ticket.").unwrap();
    assert_eq!(
        made.structured,
        Some(json!({"n": 1})),
        "the simulator's value"
    );
    assert!(matches!(
        structured.query("[[sim:no-structured]] q"),
        Err(Error::StructuredOutputMissing { .. })
    ));
    assert_eq!(b.prompts_seen().len(), 20);
}

#[test]
fn a_hung_reply_ends_when_its_test_does() {
    let b = TestBackend::new(Kind::Api);
    let session = b
        .builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung = session.query("[[sim:hang]] Is anybody there?");
    assert!(matches!(hung, Err(Error::Timeout(_))), "{hung:?}");
    drop(session);
    // The mock's connection thread is still in the hung reply's wait (a day long): dropping
    // the mock must end it rather than wait for it.
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(b);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(20))
        .expect("the mock's drop waited for the hung reply");
}

#[test]
fn a_cli_only_directive_fails_an_api_test() {
    let message = panic_message(|| {
        run_on(Kind::Api, |b| {
            let session = b.builder().build().unwrap();
            let _ = session.query("[[sim:crash]] Please crash.");
        })
    });
    assert!(message.contains("Messages API backend"), "{message}");
    assert!(message.contains("\"crash\""), "{message}");
    // The same prompt is fine on the CLI (a crash is an error there, not a misuse).
    run_on(Kind::Cli, |b| {
        let session = support::one_at_a_time_retrying(b.builder(), 0);
        assert!(session.query("[[sim:crash]] Please crash.").is_err());
    });
}

#[test]
fn a_failure_names_its_backend() {
    for (kind, name) in [(Kind::Cli, "CLI"), (Kind::Api, "Messages API")] {
        let message = panic_message(|| run_on(kind, |_| panic!("the answer was wrong")));
        assert_eq!(
            message,
            format!("on the {name} backend: the answer was wrong")
        );
    }
}
