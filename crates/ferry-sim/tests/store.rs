//! Value-store scenarios (issue 9). Each assertion message names the seed; replay a failure with
//! `ferry sim store --nodes N --hours H --seed S [--churn C --loss L --droppers D]`.

use std::time::Duration;

use ferry_sim::store::{StoreReport, StoreScenario, run};

fn scenario(nodes: usize, hours: f64, seed: u64) -> StoreScenario {
    let mut s = StoreScenario::new(nodes, hours, seed);
    s.warmup = Duration::from_secs(300);
    s.join_window = Duration::from_secs(60);
    s
}

#[test]
#[ignore = "exploration"]
fn explore() {
    let nodes: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let hours: f64 = std::env::var("H")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let mut s = scenario(nodes, hours, 1);
    s.churn_per_hour = std::env::var("C")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    s.link.loss = std::env::var("L")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    s.droppers = std::env::var("D")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    s.check_every = Some(Duration::from_secs(3600));
    let r: StoreReport = run(&s, |_, _| {});
    eprintln!("{r:#?}");
}
