//! Fresh context per item; a conversation keeps its context; answers match their prompts.

use crate::support;

use claude_rayon::Session;
use support::Fake;

#[test]
fn no_item_sees_another() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    for i in 0..5 {
        let response = session.query(format!("[[sim:context]] item {i}")).unwrap();
        assert_eq!(response.text, format!("context: [[sim:context]] item {i}"));
    }
    let prompts = fake.prompts();
    assert_eq!(prompts.len(), 5);
    assert!(prompts.iter().all(|(_, turns)| *turns == 1), "{prompts:?}");
    assert_eq!(
        session.stats().processes_started as usize,
        1,
        "one warm process served all five"
    );
}

#[test]
fn a_conversation_keeps_context_and_leaves_none_behind() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    session.query("before").unwrap();
    {
        let mut chat = session.conversation();
        chat.send("first").unwrap();
        let second = chat.send("[[sim:context]] second").unwrap();
        assert_eq!(second.text, "context: first | [[sim:context]] second");
        assert_eq!(chat.turns(), 2);
    }
    let after = session.query("[[sim:context]] after").unwrap();
    assert_eq!(after.text, "context: [[sim:context]] after");
    assert_eq!(session.stats().processes_started as usize, 1);
}

#[test]
fn per_item_usage_and_cost_are_the_items_own() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    let a = session.query("short").unwrap();
    let b = session.query("short").unwrap();
    // The fake reports a running total like the CLI; each item gets its own share.
    assert!(a.cost_usd > 0.0);
    assert!(
        (a.cost_usd - b.cost_usd).abs() < 1e-12,
        "{} vs {}",
        a.cost_usd,
        b.cost_usd
    );
    assert_eq!(a.usage, b.usage);
    let stats = session.stats();
    assert!((stats.cost_usd - a.cost_usd * 2.0).abs() < 1e-12);
}

#[test]
fn many_threads_each_get_their_own_answer() {
    let fake = Fake::new();
    let session: Session = fake.builder().concurrency(3).build().unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let session = &session;
            s.spawn(move || {
                for i in 0..10 {
                    let prompt = format!("thread {t} item {i}");
                    assert_eq!(
                        session.query(&prompt).unwrap().text,
                        format!("echo: {prompt}")
                    );
                }
            });
        }
    });
    assert_eq!(session.stats().succeeded, 40);
    assert!(session.stats().processes_started as usize <= 3);
}
