//! Three consumers on one stream, one killed with `kill -9` mid-run: every item is answered
//! at least once and at most twice, and the dead one's items are claimed by the others; and
//! what cannot be answered goes to the dead letters.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use claude_rayon::pipeline::{Pipeline, PipelineStats};
use claude_rayon::scale::{RedisStream, StreamItem};
use claude_rayon::Session;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::Value;

use crate::support::mock_api::{MockApi, Reply};
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
    for consumer in ["victim", "host-a-1", "host-b-1"] {
        let pending = pending_of(&mut connection, consumer);
        assert!(pending.is_empty(), "{consumer} left {pending:?} pending");
    }
}

/// Every field of every entry of `key` (a stream), by entry id.
fn entries(connection: &mut redis::Connection, key: &str) -> Vec<HashMap<String, String>> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(connection)
        .unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            e.map
                .iter()
                .map(|(k, v)| match v {
                    Value::BulkString(b) => (k.clone(), String::from_utf8_lossy(b).into_owned()),
                    other => panic!("{k}: {other:?}"),
                })
                .collect()
        })
        .collect()
}

/// What goes to `<stream>:dead`, with its reason, acknowledged: an entry without a `text`
/// field, at once; an item the API refuses for good (400), at once, asked once; an item that
/// keeps failing with a retryable error (529), left pending and claimed again until it has
/// been delivered more than `max_deliveries` times. The rest is answered as usual.
#[test]
fn entries_that_cannot_be_answered_go_to_the_dead_letters_acknowledged() {
    const LETTERS: &str = "letters";
    const MAX_DELIVERIES: u64 = 2;
    let Some(redis) = RedisServer::start("entries_that_cannot_be_answered") else {
        return;
    };
    let (fine, refused, flaky) = (
        support::ticket(1000, 400),
        support::ticket(1001, 400),
        support::ticket(1002, 400),
    );
    let api = MockApi::start();
    {
        let (refused, flaky) = (refused.clone(), flaky.clone());
        api.set_reply(move |prompt| {
            if prompt.contains(&refused) {
                Reply::status(400, None)
            } else if prompt.contains(&flaky) {
                Reply::status(529, None)
            } else {
                Reply::text(format!("Summary: {}", &prompt[..prompt.len().min(200)]))
            }
        });
    }
    let stream = RedisStream::consumer(&redis.url(), LETTERS, GROUP, "host-a-1")
        .unwrap()
        // Long enough that an entry being answered is not claimed under it on a busy machine.
        .claim_after(Duration::from_secs(1))
        .max_deliveries(MAX_DELIVERIES)
        .until_drained();
    let fine_id = stream.add(&fine).unwrap();
    let refused_id = stream.add(&refused).unwrap();
    let flaky_id = stream.add(&flaky).unwrap();
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // A producer that named the field otherwise.
    let no_text_id: String = redis::cmd("XADD")
        .arg(LETTERS)
        .arg("*")
        .arg("body")
        .arg(support::ticket(1003, 400))
        .query(&mut connection)
        .unwrap();

    let session = builder(&api.url())
        .retry_policy(support::quick_retries(0))
        .concurrency(2)
        .build()
        .unwrap();
    // It ends once nothing is pending: every entry answered or dead-lettered, acknowledged.
    let stats = drain(stream, session);
    assert_eq!(stats.succeeded, 1);

    let dead: BTreeMap<String, HashMap<String, String>> =
        entries(&mut connection, &format!("{LETTERS}:dead"))
            .into_iter()
            .map(|fields| (fields["id"].clone(), fields))
            .collect();
    let ids: Vec<&String> = dead.keys().collect();
    let mut expected = vec![&no_text_id, &refused_id, &flaky_id];
    expected.sort();
    assert_eq!(ids, expected, "{dead:#?}");
    let reason = |id: &str| dead[id]["reason"].as_str();
    assert!(
        reason(&no_text_id).contains("no `text` field"),
        "{}",
        reason(&no_text_id)
    );
    assert!(
        reason(&refused_id).contains("400") && !reason(&refused_id).contains("delivered"),
        "{}",
        reason(&refused_id)
    );
    assert_eq!(
        reason(&flaky_id),
        format!("delivered 3 times, more than max_deliveries ({MAX_DELIVERIES})")
    );
    assert_eq!(dead[&refused_id]["text"], refused);
    assert_eq!(dead[&flaky_id]["text"], flaky);
    assert_eq!(dead[&flaky_id]["consumer"], "host-a-1");

    // Dead letters are acknowledged: nothing is pending in the group.
    let pending: Vec<Value> = redis::cmd("XPENDING")
        .arg(LETTERS)
        .arg(GROUP)
        .query(&mut connection)
        .unwrap();
    assert_eq!(pending.first(), Some(&Value::Int(0)), "{pending:?}");
    let results: Vec<String> = entries(&mut connection, &format!("{LETTERS}:results"))
        .into_iter()
        .map(|fields| fields["id"].clone())
        .collect();
    assert_eq!(results, [fine_id]);

    // The refusal was asked once; the retryable failure once per delivery it was allowed.
    let asked = |text: &str| {
        api.requests()
            .iter()
            .filter(|r| r.prompt.contains(text))
            .count()
    };
    assert_eq!(asked(&refused), 1, "a refused item was asked again");
    assert_eq!(
        asked(&flaky),
        MAX_DELIVERIES as usize,
        "a retryable failure was not left pending and claimed again"
    );
}

/// The ids `consumer` reads from `stream` (up to `count` new entries), as `XREADGROUP` does.
fn read_as(
    connection: &mut redis::Connection,
    stream: &str,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    let reply: StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(connection)
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

/// A claimed entry's delivery count is its own even when this consumer holds more than 64
/// other entries between the claimed ones: one delivered more than `max_deliveries` times
/// goes to the dead letters instead of back to the pipeline as if delivered twice.
#[test]
fn a_claimed_entry_past_max_deliveries_is_dead_lettered_among_many_pending() {
    const POISON: &str = "poison";
    const HELD: usize = 100;
    let Some(redis) = RedisServer::start("claimed_entry_past_max_deliveries") else {
        return;
    };
    let stream = RedisStream::consumer(&redis.url(), POISON, GROUP, "host-a-1")
        .unwrap()
        .claim_after(Duration::from_secs(60))
        .max_deliveries(4);
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // A consumer that died holds the first and the last entry; this one holds the rest, in
    // flight (read just now, so not idle).
    let first = stream.add(&support::ticket(2000, 400)).unwrap();
    assert_eq!(
        read_as(&mut connection, POISON, "host-gone", 1),
        [first.as_str()]
    );
    for i in 0..HELD {
        stream.add(&support::ticket(2001 + i, 400)).unwrap();
    }
    assert_eq!(
        read_as(&mut connection, POISON, "host-a-1", HELD).len(),
        HELD
    );
    let poison = stream.add(&support::ticket(3000, 400)).unwrap();
    assert_eq!(
        read_as(&mut connection, POISON, "host-gone", 1),
        [poison.as_str()]
    );
    // host-gone died an hour ago; the poison entry had been delivered 9 times by then.
    let mut idle_for_an_hour = |id: &str, retries: Option<u64>| {
        let mut claim = redis::cmd("XCLAIM");
        claim
            .arg(POISON)
            .arg(GROUP)
            .arg("host-gone")
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(3_600_000);
        if let Some(retries) = retries {
            claim.arg("RETRYCOUNT").arg(retries);
        }
        let claimed: Vec<String> = claim.arg("JUSTID").query(&mut connection).unwrap();
        assert_eq!(claimed, [id]);
    };
    idle_for_an_hour(&first, None);
    idle_for_an_hour(&poison, Some(9));

    let mut items = stream.items();
    let taken = items.next().unwrap();
    assert_eq!((taken.id.as_str(), taken.deliveries), (first.as_str(), 2));
    let dead = entries(&mut connection, &format!("{POISON}:dead"));
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["id"], poison);
    assert_eq!(
        dead[0]["reason"],
        "delivered 10 times, more than max_deliveries (4)"
    );
}

/// An item that takes longer than `claim_after` is asked once: the consumer keeps the entry
/// it holds from being claimed, by itself (Redis hands a consumer its own idle entries back)
/// or by anyone, so it is not asked twice, written twice, nor dead-lettered while its first
/// answer is being made.
#[test]
fn an_item_slower_than_claim_after_is_asked_once() {
    const SLOW: &str = "slow";
    const CLAIM_AFTER: Duration = Duration::from_secs(1);
    let Some(redis) = RedisServer::start("an_item_slower_than_claim_after") else {
        return;
    };
    let api = MockApi::start();
    // Long enough for three claim checks past claim_after.
    api.set_latency(CLAIM_AFTER * 7 / 2);
    let stream = RedisStream::consumer(&redis.url(), SLOW, GROUP, "host-a-1")
        .unwrap()
        .claim_after(CLAIM_AFTER)
        .max_deliveries(2)
        .until_drained();
    let text = support::ticket(4000, 400);
    let id = stream.add(&text).unwrap();
    let session = builder(&api.url()).concurrency(2).build().unwrap();
    let stats = drain(stream, session);
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let asked = api
        .requests()
        .iter()
        .filter(|r| r.prompt.contains(&text))
        .count();
    assert_eq!(asked, 1, "the slow item was asked again while in flight");
    assert_eq!(stats.succeeded, 1);
    let results: Vec<String> = entries(&mut connection, &format!("{SLOW}:results"))
        .into_iter()
        .map(|fields| fields["id"].clone())
        .collect();
    assert_eq!(results, [id]);
    let dead = entries(&mut connection, &format!("{SLOW}:dead"));
    assert!(dead.is_empty(), "{dead:#?}");
}

/// Runs a pipeline over `stream` on `session` on a thread of its own, answers written to
/// `<stream>:results` and failures handed to `Acker::on_failed`, until it ends.
fn drain(stream: RedisStream, session: Session) -> PipelineStats {
    let run = std::thread::spawn(move || {
        let mut acker = stream.acker();
        let mut failures = stream.acker();
        Pipeline::builder(&session)
            .source(stream.items())
            .prompt(|t: &StreamItem| format!("Summarise this support ticket:\n{}", t.text))
            .batch_size(1)
            .on_batch(move |batch| {
                let answered = batch.into_items();
                acker
                    .ack_with_answers(answered.iter().map(|(t, r)| (t, r.text.as_str())))
                    .unwrap();
            })
            .on_failed(move |failed| failures.on_failed(&failed))
            .run()
            .unwrap()
    });
    wait_until("the consumer has ended", Duration::from_secs(60), || {
        run.is_finished()
    });
    run.join().unwrap()
}

/// A failure of the program's, not the item's (here the API rejects the key, 401), sends
/// nothing to the dead letters: every entry stays pending for a healthy consumer or a later
/// run, and the delivery is not counted, so runs failing so one after another (here two,
/// with `max_deliveries` 1) never drain the stream into the dead letters.
#[test]
fn a_rejected_key_leaves_every_entry_pending_and_nothing_dead() {
    const KEYLESS: &str = "keyless";
    const CLAIM_AFTER: Duration = Duration::from_millis(500);
    // One read's worth: the first run reads them all before it stops.
    const ITEMS: usize = 4;
    let Some(redis) = RedisServer::start("a_rejected_key_leaves_every_entry_pending") else {
        return;
    };
    let api = MockApi::start();
    api.set_reply(|_| Reply::status(401, None));
    let consumer = |name: &str| {
        RedisStream::consumer(&redis.url(), KEYLESS, GROUP, name)
            .unwrap()
            .claim_after(CLAIM_AFTER)
            .max_deliveries(1)
            .until_drained()
    };
    let mut texts = Vec::new();
    for i in 0..ITEMS {
        let text = support::ticket(5000 + i, 400);
        consumer("producer").add(&text).unwrap();
        texts.push(text);
    }
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let pending = |connection: &mut redis::Connection, min_idle: Duration| -> usize {
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(KEYLESS)
            .arg(GROUP)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(100)
            .query(connection)
            .unwrap();
        pending.len()
    };
    let session = || builder(&api.url()).concurrency(2).build().unwrap();

    for (run, name) in ["host-a-1", "host-b-1"].into_iter().enumerate() {
        let asked_before = api.requests().len();
        let stats = drain(consumer(name), session());
        assert_eq!(stats.succeeded, 0);
        assert!(
            api.requests().len() > asked_before,
            "run {run} asked for nothing"
        );
        let dead = entries(&mut connection, &format!("{KEYLESS}:dead"));
        assert!(dead.is_empty(), "run {run}: {dead:#?}");
        assert!(entries(&mut connection, &format!("{KEYLESS}:results")).is_empty());
        assert_eq!(pending(&mut connection, Duration::ZERO), ITEMS, "run {run}");
        // The next run takes them over once they have been idle for claim_after.
        wait_until(
            "every entry is idle for claim_after",
            Duration::from_secs(10),
            || pending(&mut connection, CLAIM_AFTER) == ITEMS,
        );
    }
    assert!(api
        .requests()
        .iter()
        .all(|r| texts.iter().any(|t| r.prompt.contains(t))));
}
