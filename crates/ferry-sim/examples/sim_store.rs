//! The value-store scenario without the CLI (a smaller release build than `ferry`):
//! `cargo run --release -p ferry-sim --example sim_store -- NODES HOURS CHURN LOSS DROPPERS [SEED [CHECK_EVERY_H]]`
//! prints the JSON report that `ferry sim store --json` prints for the same parameters (and an
//! interim report per simulated hour on stderr).

use std::time::Duration;

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mut s = ferry_sim::store::StoreScenario::new(arg(1, 1000), arg(2, 24.0), arg(6, 1));
    s.churn_per_hour = arg(3, 0.3);
    s.link.loss = arg(4, 0.05);
    s.droppers = arg(5, 0.1);
    s.threads = 1;
    let every: f64 = arg(7, 6.0);
    s.check_every = (every > 0.0).then(|| Duration::from_secs_f64(every * 3600.0));
    let r = ferry_sim::store::run_observed(
        &s,
        |_: Duration, _| {},
        |interim| {
            // One JSON line per simulated hour on stderr: the checks so far.
            eprintln!(
                "{}",
                serde_json::to_string(interim).unwrap_or_else(|e| e.to_string())
            );
        },
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&r).unwrap_or_else(|e| e.to_string())
    );
}
