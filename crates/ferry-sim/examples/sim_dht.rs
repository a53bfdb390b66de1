//! The DHT scenario without the CLI (a smaller release build than `ferry`):
//! `cargo run --release -p ferry-sim --example sim_dht -- NODES HOURS CHURN LOSS [SEED [THREADS [KEYS]]]`
//! prints the JSON report that `ferry sim dht --json` prints for the same parameters
//! (`KEYS`: `hashed`, the default, or `x25519`).

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mut s = ferry_sim::dht::DhtScenario::new(arg(1, 1000), arg(2, 1.0), arg(5, 1));
    s.churn_per_hour = arg(3, 0.0);
    s.link.loss = arg(4, 0.0);
    s.threads = arg(6, 1);
    if arg(7, String::from("hashed")) == "x25519" {
        s.key_agreement = ferry_sim::dht::KeyAgreement::X25519;
    }
    let r = ferry_sim::dht::run(&s, |_, _| {});
    println!(
        "{}",
        serde_json::to_string_pretty(&r).unwrap_or_else(|e| e.to_string())
    );
}
