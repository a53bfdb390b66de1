//! DHT scenarios at test scale. Each assertion message names the seed; replay a failure with
//! `ferry sim dht --nodes N --hours H --seed S [--churn C --loss L]`.

use std::time::Duration;

use ferry_sim::dht::{DhtReport, DhtScenario, KeyAgreement, run};

fn scenario(nodes: usize, hours: f64, seed: u64) -> DhtScenario {
    let mut s = DhtScenario::new(nodes, hours, seed);
    // Short runs: a 4-minute warm-up (joins in the first minute, idle measured over the last 2).
    s.warmup = Duration::from_secs(240);
    s.join_window = Duration::from_secs(60);
    s.idle_window = Duration::from_secs(120);
    s.lookups_per_node_hour = 12.0;
    s
}

fn same_but_wall(a: &DhtReport, b: &DhtReport) -> bool {
    let strip = |r: &DhtReport| DhtReport {
        wall_seconds: 0.0,
        peak_rss_bytes: 0,
        threads: 0,
        key_agreement: KeyAgreement::Hashed,
        ..r.clone()
    };
    strip(a) == strip(b)
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    let s = scenario(60, 0.12, 42);
    let a = run(&s, |_, _| {});
    let b = run(&s, |_, _| {});
    assert!(same_but_wall(&a, &b), "seed 42 diverged:\n{a:?}\n{b:?}");
    let c = run(&scenario(60, 0.12, 43), |_, _| {});
    assert!(
        !same_but_wall(&a, &c),
        "different seeds gave identical runs"
    );
}

#[test]
fn bootstrap_and_lookups_without_churn() {
    let s = scenario(200, 0.25, 7);
    let r = run(&s, |_, _| {});
    assert!(r.lookups >= 100, "seed 7: too few lookups: {r:?}");
    assert!(
        r.lookup_success_rate >= 0.999,
        "seed 7: success {:.4}: {r:?}",
        r.lookup_success_rate
    );
    assert!(
        r.bootstrap_stable_s.is_some(),
        "seed 7: close lists never stabilized: {r:?}"
    );
    assert!(r.close_list_mean >= 8.0, "seed 7: {r:?}");
    assert!(
        r.idle_packets_per_node_minute > 0.0 && r.idle_packets_per_node_minute < 600.0,
        "seed 7: {r:?}"
    );
    assert!(
        r.median_lookup_ms > 0.0 && r.p99_lookup_ms >= r.median_lookup_ms,
        "seed 7: {r:?}"
    );
}

#[test]
fn lookups_under_churn_and_loss() {
    let mut s = scenario(200, 0.5, 11);
    s.churn_per_hour = 0.3;
    s.link.loss = 0.05;
    let r = run(&s, |_, _| {});
    assert!(r.churned > 10, "seed 11: churn did not happen: {r:?}");
    assert!(r.lookups >= 100, "seed 11: {r:?}");
    assert!(
        r.lookup_success_rate >= 0.99,
        "seed 11: success {:.4}: {r:?}",
        r.lookup_success_rate
    );
}

/// The CI scenario: 1,000 nodes, 30 simulated minutes (10-minute warm-up, then 20 minutes
/// of lookups, about 2,000 of them), no churn: ≥ 99.9 % of lookups resolve.
#[test]
fn thousand_nodes_half_hour() {
    let s = DhtScenario::new(1000, 0.5, 1);
    let r = run(&s, |_, _| {});
    eprintln!("MEASURE {}", serde_json::to_string(&r).unwrap_or_default());
    assert!(r.lookups >= 1500, "seed 1: {r:?}");
    assert!(
        r.lookup_success_rate >= 0.999,
        "seed 1: success {:.5}: {r:?}",
        r.lookup_success_rate
    );
    assert!(r.bootstrap_stable_s.is_some(), "seed 1: {r:?}");
}

/// The same with 30 %/h churn and 5 % packet loss: ≥ 99 % of lookups resolve.
#[test]
fn thousand_nodes_half_hour_churn_and_loss() {
    let mut s = DhtScenario::new(1000, 0.5, 1);
    s.churn_per_hour = 0.3;
    s.link.loss = 0.05;
    let r = run(&s, |_, _| {});
    eprintln!("MEASURE {}", serde_json::to_string(&r).unwrap_or_default());
    assert!(r.churned >= 50, "seed 1: {r:?}");
    assert!(r.lookups >= 1500, "seed 1: {r:?}");
    assert!(
        r.lookup_success_rate >= 0.99,
        "seed 1: success {:.5}: {r:?}",
        r.lookup_success_rate
    );
}

/// The parallel simulation gives the same run as one thread, bit for bit, with churn and loss
/// (which draw from the nodes' link RNGs), and with more threads than cores.
#[test]
fn threads_do_not_change_the_run() {
    let mut s = scenario(80, 0.12, 5);
    s.churn_per_hour = 0.5;
    s.link.loss = 0.05;
    s.threads = 1;
    let one = run(&s, |_, _| {});
    for threads in [2, 3] {
        s.threads = threads;
        let many = run(&s, |_, _| {});
        assert!(
            same_but_wall(&one, &many),
            "seed 5: {threads} threads diverged from 1:\n{one:?}\n{many:?}"
        );
    }
    assert!(one.churned > 0 && one.lookups > 0, "seed 5: {one:?}");
}

/// The simulator's hashed key agreement changes only the wall time: with real X25519 the run is
/// the same, bit for bit (same lookups, timings, packets, keys computed).
#[test]
fn key_agreement_does_not_change_the_run() {
    let mut s = scenario(80, 0.12, 9);
    s.churn_per_hour = 0.5;
    s.link.loss = 0.05;
    s.key_agreement = KeyAgreement::Hashed;
    let hashed = run(&s, |_, _| {});
    s.key_agreement = KeyAgreement::X25519;
    let x25519 = run(&s, |_, _| {});
    assert_eq!(hashed.key_agreement, KeyAgreement::Hashed);
    assert_eq!(x25519.key_agreement, KeyAgreement::X25519);
    assert!(
        same_but_wall(&hashed, &x25519),
        "seed 9: X25519 diverged from the hashed agreement:\n{hashed:?}\n{x25519:?}"
    );
    assert!(
        hashed.lookups > 0 && hashed.keys_computed_per_node > 0.0,
        "seed 9: {hashed:?}"
    );
}
