//! Value-store scenarios (issue 9). Each assertion message names the seed; replay a failure with
//! `ferry sim store --nodes N --hours H --seed S [--churn C --loss L --droppers D]`.

use std::time::Duration;

use ferry_sim::store::{StoreReport, StoreScenario, run};

fn scenario(nodes: usize, hours: f64, seed: u64) -> StoreScenario {
    let mut s = StoreScenario::new(nodes, hours, seed);
    // Short runs: a 5-minute warm-up (joins in the first minute).
    s.warmup = Duration::from_secs(300);
    s.join_window = Duration::from_secs(60);
    s
}

fn same_but_wall(a: &StoreReport, b: &StoreReport) -> bool {
    let strip = |r: &StoreReport| StoreReport {
        wall_seconds: 0.0,
        peak_rss_bytes: 0,
        threads: 0,
        ..r.clone()
    };
    strip(a) == strip(b)
}

fn assert_retrievable(r: &StoreReport, bar: f64) {
    let seed = r.seed;
    assert!(r.items_put > 0 && r.messages_put > 0, "seed {seed}: {r:#?}");
    assert!(
        r.item_checks >= r.items_put && r.message_checks >= r.messages_put,
        "seed {seed}: not every item/message was checked: {r:#?}"
    );
    assert!(
        r.items_retrievable >= bar && r.final_items_retrievable >= bar,
        "seed {seed}: items retrievable below {bar}: {r:#?}"
    );
    assert!(
        r.messages_retrievable >= bar && r.final_messages_retrievable >= bar,
        "seed {seed}: messages retrievable below {bar}: {r:#?}"
    );
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    let mut s = scenario(60, 0.4, 42);
    s.churn_per_hour = 0.3;
    s.link.loss = 0.05;
    s.droppers = 0.1;
    s.check_every = Some(Duration::from_secs(600));
    let a = run(&s, |_, _| {});
    let b = run(&s, |_, _| {});
    assert!(same_but_wall(&a, &b), "seed 42 diverged:\n{a:?}\n{b:?}");
    assert!(a.lookups > 0 && a.item_checks > 0, "{a:#?}");
    s.seed = 43;
    let c = run(&s, |_, _| {});
    assert!(
        !same_but_wall(&a, &c),
        "different seeds gave identical runs"
    );
}

#[test]
fn threads_do_not_change_the_run() {
    let mut s = scenario(50, 0.35, 7);
    s.churn_per_hour = 0.3;
    s.link.loss = 0.05;
    s.droppers = 0.1;
    let a = run(&s, |_, _| {});
    s.threads = 2;
    let b = run(&s, |_, _| {});
    assert!(
        same_but_wall(&a, &b),
        "seed 7: 1 vs 2 threads:\n{a:?}\n{b:?}"
    );
}

/// The CI variant of the issue's test: 150 nodes, 30 %/h churn, 5 % loss, 10 % droppers,
/// 1.5 simulated hours (three holder-republish rounds; messages are never re-put by their
/// senders), checks every 30 minutes. 300 messages (not the default one per two nodes, 75): a
/// 99 % bar over 75 messages fails on a single loss (98.7 %), which is below the test's
/// resolution, not a verdict (a CI run lost 1 of 75 where local runs of the same seed lost none:
/// holders drew their re-put jitter in hash-map order, which differs between processes; fixed,
/// see `republish_schedule_does_not_depend_on_hash_order` in ferry-data).
#[test]
fn items_and_messages_survive_churn_loss_and_droppers() {
    let mut s = scenario(150, 1.5, 9);
    s.messages = 300;
    s.churn_per_hour = 0.3;
    s.link.loss = 0.05;
    s.droppers = 0.1;
    s.check_every = Some(Duration::from_secs(1800));
    let r = run(&s, |_, _| {});
    eprintln!(
        "seed 9: messages {}/{} checks ok, final {}/{}; items {}/{}, final {}/{}; lookups {}",
        r.message_checks_ok,
        r.message_checks,
        r.final_messages_ok,
        r.final_messages,
        r.item_checks_ok,
        r.item_checks,
        r.final_items_ok,
        r.final_items,
        r.lookups
    );
    assert_retrievable(&r, 0.99);
    assert!(r.churned > 40, "seed 9: churn did not happen: {r:#?}");
}

/// The issue's test at full scale: 1,000 nodes, 30 %/h churn, 5 % loss, 10 % droppers,
/// 24 simulated hours, ≥ 99 % of items and messages retrievable. Too slow for CI: one
/// simulated hour of 1,000 nodes costs 2–4 CPU-minutes in release and about the same in the
/// dev profile (which optimizes the ferry crates), so 24 h is 1–1.5 CPU-hours; on the shared
/// 2-core machine a process got a quarter of a core, ≈ 11 wall-minutes per simulated hour.
/// Run it with
/// `cargo test --release -p ferry-sim --test store -- --ignored issue_scale`
/// or `ferry sim store --nodes 1000 --churn 0.3 --loss 0.05 --droppers 0.1 --hours 24`.
#[test]
#[ignore = "1,000 nodes × 24 h: about an hour of CPU"]
fn issue_scale_1000_nodes_24_hours() {
    let mut s = StoreScenario::new(1000, 24.0, 1);
    s.churn_per_hour = 0.3;
    s.link.loss = 0.05;
    s.droppers = 0.1;
    let r = run(&s, |_, _| {});
    eprintln!("{r:#?}");
    assert_retrievable(&r, 0.99);
}
