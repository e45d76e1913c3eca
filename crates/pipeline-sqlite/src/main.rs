//! Classify support tickets that never stop coming, and store them in SQLite in batches, with
//! `Pipeline`: a thread feeds a channel without end, each ticket gets an urgency from Claude,
//! and each batch of rows is written in one transaction. After a while the pipeline stops
//! gracefully (calls in flight finish, partial batches are written) and the row count is
//! checked against the successes.
//!
//! ```sh
//! cargo run -p pipeline-sqlite                      # real CLI, else the simulator
//! cargo run -p pipeline-sqlite -- --simulate --seconds 3
//! cargo run -p pipeline-sqlite -- --simulate --items 200 --db /tmp/tickets.sqlite
//! ```
//!
//! Flags: `--seconds N` how long to run (default 5), or `--items N` to stop once the Nth
//! ticket is being classified (the few in flight with it finish too); `--batch-size N` rows per transaction (default 10); `--concurrency N`
//! (default 4); `--model NAME`; `--db PATH` (default: a new file in the temp folder; an
//! existing database gets its rows added, and only this run's are counted); `--simulate`.

// The examples' shared helpers, from claude-rayon's own examples folder.
#[path = "../../../examples/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::pipeline::Pipeline;
use claude_rayon::pipeline::{Batch, Flush};
use claude_rayon::{Failed, Session};
use rusqlite::{params, Connection};

const USAGE: &str = "usage: pipeline_sqlite [--seconds N | --items N] [--batch-size N] \
                     [--concurrency N] [--model M] [--db PATH] [--simulate]";

/// A synthetic support ticket.
struct Ticket {
    id: u64,
    customer: &'static str,
    subject: &'static str,
}

/// What goes into the database.
struct Row {
    ticket: u64,
    customer: &'static str,
    subject: &'static str,
    urgency: String,
}

const CUSTOMERS: [&str; 6] = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark"];
const SUBJECTS: [&str; 10] = [
    "cannot log in since this morning",
    "invoice shows the wrong VAT rate",
    "production database is down",
    "feature request: dark mode",
    "password reset email never arrives",
    "all API calls return 500",
    "typo on the pricing page",
    "data export is missing March",
    "charged twice this month",
    "how do I add a second admin?",
];

/// Tickets without end: the feeder stops only when the pipeline lets go of the channel.
fn ticket(id: u64) -> Ticket {
    Ticket {
        id,
        customer: CUSTOMERS[(id * 7 % CUSTOMERS.len() as u64) as usize],
        subject: SUBJECTS[(id * 3 % SUBJECTS.len() as u64) as usize],
    }
}

fn prompt(ticket: &Ticket) -> String {
    format!(
        "A support ticket from the customer {}: \"{}\". How urgent is it? Answer with one \
         word.\nAllowed answers: low | medium | high",
        ticket.customer, ticket.subject
    )
}

fn main() {
    claude_rayon::simulator::serve_if_requested();
    common::install_logger();
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

/// A number flag, if given; `Err` with a message when it is not a positive number.
fn number(args: &[String], name: &str) -> Result<Option<u64>, String> {
    match common::flag_value(args, name) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "{name} needs a positive number, not {v:?}\n{USAGE}"
            )),
        },
    }
}

struct Settings {
    seconds: u64,
    items: Option<u64>,
    batch_size: usize,
    concurrency: usize,
}

fn settings(args: &[String]) -> Result<Settings, String> {
    Ok(Settings {
        seconds: number(args, "--seconds")?.unwrap_or(5),
        items: number(args, "--items")?,
        batch_size: number(args, "--batch-size")?.unwrap_or(10) as usize,
        concurrency: number(args, "--concurrency")?.unwrap_or(4) as usize,
    })
}

fn open_db(path: &PathBuf) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS tickets (
             run TEXT NOT NULL,
             ticket INTEGER NOT NULL,
             customer TEXT NOT NULL,
             subject TEXT NOT NULL,
             urgency TEXT NOT NULL
         )",
    )?;
    Ok(db)
}

/// One transaction per batch: the batch is stored whole or not at all.
fn store(db: &mut Connection, run: &str, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO tickets (run, ticket, customer, subject, urgency) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in rows {
            insert.execute(params![
                run,
                row.ticket as i64,
                row.customer,
                row.subject,
                row.urgency
            ])?;
        }
    }
    tx.commit()
}

fn run(args: &[String]) -> i32 {
    let settings = match settings(args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return 2;
        }
    };
    let run_id = format!("{}-{}", std::process::id(), unix_millis());
    let path = common::flag_value(args, "--db").map_or_else(
        || std::env::temp_dir().join(format!("claude-rayon-tickets-{run_id}.sqlite")),
        PathBuf::from,
    );
    let mut db = match open_db(&path) {
        Ok(db) => db,
        Err(err) => {
            eprintln!("cannot open {}: {err}", path.display());
            return 1;
        }
    };

    let mut builder = Session::builder().concurrency(settings.concurrency);
    if let Some(model) = common::flag_value(args, "--model") {
        builder = builder.model(model);
    }
    let backend =
        match common::connect(builder, args.iter().any(|a| a == "--simulate"), false, None) {
            Ok(backend) => backend,
            Err(err) => {
                eprintln!("cannot start: {err}");
                return 1;
            }
        };
    let label = backend.label();

    // The feeder: tickets without end into a bounded channel. It blocks while the pipeline is
    // busy, and ends when the pipeline drops the receiver.
    let (tickets, source) = crossbeam_channel::bounded(64);
    std::thread::spawn(move || {
        for id in 1u64.. {
            if tickets.send(ticket(id)).is_err() {
                break;
            }
        }
    });

    let write_errors = Arc::new(AtomicU64::new(0));
    let fatal_seen = Arc::new(AtomicBool::new(false));
    let on_batch = {
        let (run_id, write_errors) = (run_id.clone(), Arc::clone(&write_errors));
        // On the simulator a batch takes milliseconds: report a few a second, not each one.
        let mut last_report: Option<Instant> = None;
        move |batch: Batch<Row>| match store(&mut db, &run_id, &batch.items) {
            Ok(()) => {
                if last_report.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
                    return;
                }
                last_report = Some(Instant::now());
                let count = |u: &str| batch.items.iter().filter(|r| r.urgency == u).count();
                let why = match batch.flush {
                    Flush::Full => "full",
                    Flush::Timeout => "after the timeout",
                    _ => "the last ones",
                };
                println!(
                    "{label}batch {:>3}: {:>3} tickets stored ({why}): high {}, medium {}, low {}",
                    batch.seq,
                    batch.len(),
                    count("high"),
                    count("medium"),
                    count("low"),
                );
            }
            Err(err) => {
                write_errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
                eprintln!("batch {} not stored: {err}", batch.seq);
            }
        }
    };
    let on_failed = {
        let fatal_seen = Arc::clone(&fatal_seen);
        move |failed: Failed<Ticket>| {
            if let Some(message) = common::explain_fatal(&failed.error) {
                // The pipeline stops itself on a fatal error; say why once.
                if !fatal_seen.swap(true, Ordering::Relaxed) {
                    eprintln!("{message}");
                }
                return;
            }
            println!("ticket {} not classified: {}", failed.item.id, failed.error);
        }
    };
    // With --items N, the prompt of ticket N says it is time to stop.
    let (enough_tx, enough) = crossbeam_channel::bounded(1);
    let last_ticket = settings.items;
    let started = Instant::now();
    let handle = Pipeline::builder(&backend.session)
        .source_channel(source)
        .prompt(move |ticket: &Ticket| {
            if Some(ticket.id) == last_ticket {
                let _ = enough_tx.try_send(());
            }
            prompt(ticket)
        })
        .transform(|ticket: &Ticket, answer| Row {
            ticket: ticket.id,
            customer: ticket.customer,
            subject: ticket.subject,
            urgency: answer.text.trim().trim_end_matches('.').to_lowercase(),
        })
        .batch_size(settings.batch_size)
        .batch_timeout(Duration::from_millis(500))
        .on_batch(on_batch)
        .on_failed(on_failed)
        .start();
    let handle = match handle {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("cannot start the pipeline: {err}");
            return 1;
        }
    };

    // Run until the time is up or enough tickets came in (or a fatal error ended it).
    let deadline = started + Duration::from_secs(settings.seconds);
    while !handle.is_finished() {
        let wait = Duration::from_millis(100);
        if settings.items.is_some() {
            if enough.recv_timeout(wait).is_ok() {
                break;
            }
        } else if Instant::now() >= deadline {
            break;
        } else {
            std::thread::sleep(wait.min(deadline - Instant::now()));
        }
    }
    let stats = handle.stop();
    let elapsed = started.elapsed();

    let rows: u64 = match Connection::open(&path).and_then(|db| {
        db.query_row(
            "SELECT COUNT(*) FROM tickets WHERE run = ?1",
            [&run_id],
            |row| row.get::<_, i64>(0),
        )
    }) {
        Ok(rows) => rows as u64,
        Err(err) => {
            eprintln!("cannot count the rows: {err}");
            return 1;
        }
    };
    println!(
        "{label}stopped after {:.1} s; {:.1} tickets/s",
        elapsed.as_secs_f64(),
        stats.received as f64 / elapsed.as_secs_f64()
    );
    println!("{label}received    {}", stats.received);
    println!("{label}succeeded   {}", stats.succeeded);
    println!(
        "{label}failed      {} ({} stopped unsent)",
        stats.failed, stats.stopped
    );
    println!(
        "{label}batches     {} ({} handler panics)",
        stats.batches, stats.handler_panics
    );
    println!(
        "{label}most in flight {}, most buffered {}",
        stats.max_in_flight, stats.max_buffered
    );
    println!("{label}rows stored {rows} in {}", path.display());
    if backend.simulated {
        println!("{label}simulated, nothing billed");
    } else {
        println!(
            "{} requests, ${:.4}",
            stats.session.requests, stats.session.cost_usd
        );
    }
    let written = stats.succeeded - write_errors.load(Ordering::Relaxed);
    if rows != written {
        eprintln!("the database has {rows} rows of this run, but {written} were stored");
        return 1;
    }
    i32::from(fatal_seen.load(Ordering::Relaxed) || stats.fatal_error.is_some())
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
