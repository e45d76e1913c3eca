//! The mock Messages API as its own process, for benches: the memory of the program under test
//! then does not include the mock's.
//!
//! ```text
//! mock-api-server [--latency-ms N] [--rpm N] [--batch-processing-ms N]
//! ```
//!
//! Prints its URL (`http://127.0.0.1:PORT`) as one line on stdout, then serves (echo replies,
//! no requests kept: see `MockApi::set_recording`) until its stdin reaches end of file. A bench
//! ends it by dropping the child's stdin; if the bench dies, its end of the pipe closes too, so
//! the server never outlives it (no `prctl` parent-death signal: that would need libc).
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use claude_rayon_mock_api::MockApi;

const USAGE: &str = "usage: mock-api-server [--latency-ms N] [--rpm N] [--batch-processing-ms N]";

struct Options {
    latency: Duration,
    rpm: Option<u32>,
    /// How long each Message Batch takes (`MockApi::set_batch_processing_time`).
    batch_processing: Duration,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        latency: Duration::ZERO,
        rpm: None,
        batch_processing: Duration::ZERO,
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = args
                .next()
                .ok_or_else(|| format!("{name} needs a number"))?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a whole number"))
        };
        match flag.as_str() {
            "--latency-ms" => options.latency = Duration::from_millis(value("--latency-ms")?),
            "--batch-processing-ms" => {
                options.batch_processing = Duration::from_millis(value("--batch-processing-ms")?)
            }
            "--rpm" => {
                let rpm = value("--rpm")?;
                let rpm = u32::try_from(rpm).map_err(|_| format!("--rpm: {rpm} is too large"))?;
                options.rpm = Some(rpm);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mock-api-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let api = MockApi::start();
    // Nobody can read the records of another process: keep none, so a long bench stays small.
    api.set_recording(false);
    api.set_latency(options.latency);
    api.set_rate_limit(options.rpm);
    api.set_batch_processing_time(options.batch_processing);
    let mut stdout = io::stdout().lock();
    if writeln!(stdout, "{}", api.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Serve until stdin ends: the parent closed it, or died.
    let mut sink = [0u8; 4096];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(api);
    ExitCode::SUCCESS
}
