//! The `mock-api-server` binary: prints its URL, serves, and exits when its stdin ends.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One request on its own connection (`connection: close`); the raw response.
fn post(addr: &str, body: &str) -> String {
    call(addr, "POST", "/v1/messages", body)
}

fn call(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_with_its_options_until_stdin_ends() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-api-server"))
        .args(["--latency-ms", "1", "--rpm", "1000"])
        .args(["--batch-processing-ms", "3600000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let addr = url
        .trim()
        .strip_prefix("http://127.0.0.1:")
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("not a loopback URL: {url:?}"));

    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"The printer on floor two jams on every duplex job since Monday; please look into it."}]}"#;
    let response = post(&addr, body);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        response.contains("anthropic-ratelimit-requests-limit: 1000\r\n"),
        "{response}"
    );
    assert!(
        response.contains("echo: The printer on floor two"),
        "{response}"
    );

    // A batch of an hour's processing is still in progress when looked at again.
    let batch = format!(r#"{{"requests":[{{"custom_id":"printer-1","params":{body}}}]}}"#);
    let created = call(&addr, "POST", "/v1/messages/batches", &batch);
    assert!(created.starts_with("HTTP/1.1 200 "), "{created}");
    let id_at = created.find("msgbatch_").unwrap();
    let id = &created[id_at..id_at + created[id_at..].find('"').unwrap()];
    let looked = call(&addr, "GET", &format!("/v1/messages/batches/{id}"), "");
    assert!(
        looked.contains(r#""processing_status":"in_progress""#),
        "{looked}"
    );

    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server outlived its stdin");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn rejects_an_unknown_argument() {
    let out = Command::new(env!("CARGO_BIN_EXE_mock-api-server"))
        .arg("--rps")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--rps\""));
    assert!(out.stdout.is_empty());
}
