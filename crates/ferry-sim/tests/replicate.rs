//! Replication scenarios (issue 10 item 2; `data-layer.md` §4 item 9). Replay a failure with
//! `ferry sim replicate --nodes N --churn C --hours H --seed S`.

use ferry_sim::replicate::{ReplicateReport, ReplicateScenario, run};

fn print(r: &ReplicateReport) {
    println!("hour  healthy%  min%   mean  spike  lost");
    for row in &r.rows {
        println!(
            "{:>4}  {:>7.2}  {:>6.2}  {:>5.2}  {:>5.1}  {:>4}",
            row.hour,
            row.healthy * 100.0,
            row.healthy_min * 100.0,
            row.mean_replicas,
            row.spike_replicas,
            row.lost
        );
    }
    println!(
        "healthy {:.3}% (min {:.2}%), lost {}, spike before {:.1} peak {:.1} end {:.1}, fetches {}, churned {}, recruits {}, refused {}, {:.1} pkt/node/min, wall {:.1}s",
        r.healthy * 100.0,
        r.healthy_min * 100.0,
        r.lost,
        r.spike_before,
        r.spike_peak,
        r.spike_end,
        r.fetches,
        r.churned,
        r.recruit_stores,
        r.stores_refused,
        r.packets_per_node_minute,
        r.wall_seconds
    );
}

fn check(r: &ReplicateReport) {
    let seed = r.seed;
    assert!(
        r.published_full as usize >= r.items * 99 / 100,
        "seed {seed}: publishes short of pins: {r:#?}"
    );
    assert!(
        r.healthy >= 0.99,
        "seed {seed}: ≥ 3 replicas below 99 %: {r:#?}"
    );
    for row in &r.rows {
        assert!(
            row.healthy >= 0.99,
            "seed {seed}: hour {} below 99 %: {r:#?}",
            row.hour
        );
    }
    assert!(
        r.spike_peak >= 2.0 * r.spike_before && r.spike_peak >= 20.0,
        "seed {seed}: the demand spike did not add replicas: {r:#?}"
    );
    assert!(
        r.spike_end <= r.spike_before + 1.5,
        "seed {seed}: spike replicas did not fall back: {r:#?}"
    );
}

/// 200 nodes, 24 h at 30 %/h churn: ≥ 3 live replicas of ≥ 99 % of items every hour; a demand
/// spike raises the spike items' replicas and they fall back after it.
#[test]
fn replicas_hold_through_churn_and_follow_demand() {
    let s = ReplicateScenario::new(200, 24.0, 0.3, 1);
    let r = run(&s, |_, _| {});
    print(&r);
    check(&r);
}

/// Same seed, same run.
#[test]
fn same_seed_same_run() {
    let s = ReplicateScenario::new(60, 1.0, 0.3, 7);
    let mut a = run(&s, |_, _| {});
    let mut b = run(&s, |_, _| {});
    a.wall_seconds = 0.0;
    b.wall_seconds = 0.0;
    assert_eq!(a, b);
}

/// Full scale: 1000 nodes, 24 h, 30 %/h churn.
#[test]
#[ignore = "full scale (minutes); run with --ignored"]
fn full_scale_1000_nodes_24h() {
    let s = ReplicateScenario::new(1000, 24.0, 0.3, 1);
    let r = run(&s, |_, _| {});
    print(&r);
    check(&r);
}
