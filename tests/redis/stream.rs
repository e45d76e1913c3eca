//! Three consumers on one stream, one killed with `kill -9` mid-run: every item is answered
//! at least once and at most twice, and the dead one's items are claimed by the others.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use claude_rayon::pipeline::Pipeline;
use claude_rayon::scale::{RedisStream, StreamItem};
use redis::streams::StreamRangeReply;
use redis::Value;

use crate::support::mock_api::MockApi;
use crate::support::redis::RedisServer;
use crate::support::{self, wait_until};
use crate::{builder, child, finished};

const CONSUMER_ENV: &str = "CLAUDE_RAYON_TEST_STREAM_CONSUMER";
const STREAM: &str = "tickets";
const GROUP: &str = "summaries";
const ITEMS: usize = 60;
/// How long a dead consumer's entries wait before the others take them.
const CLAIM_AFTER: Duration = Duration::from_secs(2);

fn consume(spec: &str) {
    let mut parts = spec.split(' ');
    let (redis_url, api_url, name) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let stream = RedisStream::consumer(redis_url, STREAM, GROUP, name)
        .unwrap()
        .claim_after(CLAIM_AFTER)
        .until_drained();
    let session = builder(api_url).concurrency(2).build().unwrap();
    let mut acker = stream.acker();
    let mut failures = stream.acker();
    let stats = Pipeline::builder(&session)
        .source(stream.items())
        .prompt(|t: &StreamItem| format!("Summarise this support ticket:\n{}", t.text))
        .batch_size(2)
        .batch_timeout(Duration::from_millis(50))
        .on_batch(move |batch| {
            let answered = batch.into_items();
            acker
                .ack_with_answers(answered.iter().map(|(t, r)| (t, r.text.as_str())))
                .unwrap();
        })
        .on_failed(move |failed| failures.on_failed(&failed))
        .run()
        .unwrap();
    println!("CONSUMER_DONE {}", stats.succeeded);
}

/// `(entry id, consumer, answer)` of every result written so far.
fn results(connection: &mut redis::Connection) -> Vec<(String, String, String)> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{STREAM}:results"))
        .arg("-")
        .arg("+")
        .query(connection)
        .unwrap();
    let field = |map: &std::collections::HashMap<String, Value>, k: &str| match map.get(k) {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("{k}: {other:?}"),
    };
    reply
        .ids
        .iter()
        .map(|e| {
            (
                field(&e.map, "id"),
                field(&e.map, "consumer"),
                field(&e.map, "text"),
            )
        })
        .collect()
}

/// The ids pending for `consumer`.
fn pending_of(connection: &mut redis::Connection, consumer: &str) -> Vec<String> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query(connection)
        .unwrap();
    pending.into_iter().map(|p| p.0).collect()
}

#[test]
fn a_consumer_killed_mid_run_leaves_nothing_unanswered() {
    if let Ok(spec) = std::env::var(CONSUMER_ENV) {
        return consume(&spec);
    }
    let Some(redis) = RedisServer::start("a_consumer_killed_mid_run") else {
        return;
    };
    let api = MockApi::start();
    // Items take a while, so the victim has some in flight when it dies.
    api.set_latency(Duration::from_millis(100));
    let producer = RedisStream::consumer(&redis.url(), STREAM, GROUP, "producer").unwrap();
    let mut texts = BTreeMap::new();
    for i in 0..ITEMS {
        let text = support::ticket(i, 400);
        texts.insert(producer.add(&text).unwrap(), text);
    }
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let spawn = |name: &str| {
        child(
            module_path!(),
            "a_consumer_killed_mid_run_leaves_nothing_unanswered",
            &[(
                CONSUMER_ENV,
                format!("{} {} {name}", redis.url(), api.url()),
            )],
        )
    };
    let mut victim = spawn("victim");
    let survivors = [spawn("host-a-1"), spawn("host-b-1")];
    wait_until(
        "the victim has answered a few",
        Duration::from_secs(30),
        || {
            results(&mut connection)
                .iter()
                .filter(|r| r.1 == "victim")
                .count()
                >= 3
        },
    );
    victim.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    victim.wait().unwrap();
    let left_by_victim = pending_of(&mut connection, "victim");
    assert!(
        !left_by_victim.is_empty(),
        "the victim died holding nothing"
    );
    // Claimed once they have been idle for CLAIM_AFTER (plus a claim check's period).
    wait_until(
        "the others claim the victim's entries",
        CLAIM_AFTER * 3 + Duration::from_secs(5),
        || pending_of(&mut connection, "victim").is_empty(),
    );
    println!(
        "the victim's {} pending entries were claimed {:?} after the kill (claim_after {CLAIM_AFTER:?})",
        left_by_victim.len(),
        killed_at.elapsed()
    );
    for (i, survivor) in survivors.into_iter().enumerate() {
        let out = finished(survivor, &format!("consumer {i}"));
        assert!(out.contains("CONSUMER_DONE"), "{out}");
    }
    let mut answers: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (id, consumer, text) in results(&mut connection) {
        answers.entry(id).or_default().push((consumer, text));
    }
    for (id, text) in &texts {
        let got = answers.get(id).map_or(&[][..], |a| &a[..]);
        assert!(
            (1..=2).contains(&got.len()),
            "entry {id} answered {} times",
            got.len()
        );
        for (_, answer) in got {
            assert!(answer.contains(&text[..60]), "entry {id}: {answer}");
        }
    }
    assert_eq!(answers.len(), ITEMS, "results for entries never added");
    for id in &left_by_victim {
        assert!(
            answers[id].iter().any(|(consumer, _)| consumer != "victim"),
            "entry {id}, left by the victim, was not answered by another consumer"
        );
    }
    let dead: u64 = redis::cmd("XLEN")
        .arg(format!("{STREAM}:dead"))
        .query(&mut connection)
        .unwrap();
    assert_eq!(dead, 0);
    assert!(pending_of(&mut connection, "host-a-1").is_empty());
}
