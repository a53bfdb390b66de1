//! `ferry sim store`: the value-store simulation of issue 9 (`ferry_sim::store`).

use anyhow::Result;

/// `ferry sim store` options.
#[derive(clap::Args, Debug)]
pub(crate) struct StoreArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Fraction of nodes replaced per hour (0.3 = 30 %/h).
    #[arg(long, default_value_t = 0.0, value_name = "PER_HOUR")]
    churn: f64,
    /// Packet loss rate (0.05 = 5 %).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of nodes that accept stores and drop them (0.1 = 10 %).
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    droppers: f64,
    /// Simulated hours.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Run seed (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Items put over the run, half immutable, half mutable (default: one per node).
    #[arg(long)]
    items: Option<usize>,
    /// Offline messages put over the run (default: one per two nodes).
    #[arg(long)]
    messages: Option<usize>,
    /// Hours between checks of every live item and message (0: only the final check).
    #[arg(long, default_value_t = 6.0, value_name = "HOURS")]
    check_every: f64,
    /// Threads advancing the nodes (default: the cores not already busy, per the load
    /// average); the result is the same for any count.
    #[arg(long)]
    threads: Option<usize>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Runs the simulation and prints the report (table or JSON).
pub(crate) async fn run(a: StoreArgs) -> Result<()> {
    anyhow::ensure!(a.nodes >= 16, "--nodes must be at least 16");
    anyhow::ensure!((0.0..1.0).contains(&a.loss), "--loss must be in [0, 1)");
    anyhow::ensure!(a.churn >= 0.0, "--churn must not be negative");
    anyhow::ensure!(
        (0.0..1.0).contains(&a.droppers),
        "--droppers must be in [0, 1)"
    );
    anyhow::ensure!(
        a.hours > 0.0 && a.hours <= 1000.0,
        "--hours must be in (0, 1000]"
    );
    anyhow::ensure!(a.check_every >= 0.0, "--check-every must not be negative");
    let mut s = ferry_sim::store::StoreScenario::new(a.nodes, a.hours, a.seed);
    s.churn_per_hour = a.churn;
    s.link.loss = a.loss;
    s.droppers = a.droppers;
    if let Some(n) = a.items {
        s.items = n;
    }
    if let Some(n) = a.messages {
        s.messages = n;
    }
    s.check_every =
        (a.check_every > 0.0).then(|| std::time::Duration::from_secs_f64(a.check_every * 3600.0));
    s.threads = a.threads.unwrap_or_else(ferry_sim::dht::default_threads);
    anyhow::ensure!(s.threads >= 1, "--threads must be at least 1");
    let bar = indicatif::ProgressBar::new(s.duration.as_secs());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} simulated {pos}/{len} s [{bar:30}] {percent}%  elapsed {elapsed}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let report = tokio::task::spawn_blocking(move || {
        let r = ferry_sim::store::run(&s, |done, _| bar.set_position(done.as_secs()));
        bar.finish_and_clear();
        r
    })
    .await?;
    if a.json {
        crate::print_json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn print_table(r: &ferry_sim::store::StoreReport) {
    let rows: Vec<(&str, String)> = vec![
        ("nodes", r.nodes.to_string()),
        ("seed", r.seed.to_string()),
        (
            "churn per hour",
            format!("{:.0} %", r.churn_per_hour * 100.0),
        ),
        ("loss", format!("{:.1} %", r.loss * 100.0)),
        ("droppers", format!("{:.0} %", r.droppers * 100.0)),
        ("simulated hours", format!("{:.1}", r.hours)),
        (
            "items put (never stored)",
            format!("{} ({})", r.items_put, r.items_unstored),
        ),
        (
            "items retrievable (all checks)",
            format!(
                "{} ({}/{})",
                pct(r.items_retrievable),
                r.item_checks_ok,
                r.item_checks
            ),
        ),
        (
            "items retrievable (final)",
            format!(
                "{} ({}/{})",
                pct(r.final_items_retrievable),
                r.final_items_ok,
                r.final_items
            ),
        ),
        ("messages put", r.messages_put.to_string()),
        (
            "messages retrievable (all checks)",
            format!(
                "{} ({}/{})",
                pct(r.messages_retrievable),
                r.message_checks_ok,
                r.message_checks
            ),
        ),
        (
            "messages retrievable (final)",
            format!(
                "{} ({}/{})",
                pct(r.final_messages_retrievable),
                r.final_messages_ok,
                r.final_messages
            ),
        ),
        ("store lookups", r.lookups.to_string()),
        ("nodes churned", r.churned.to_string()),
        (
            "packets sent/node/min (all)",
            format!("{:.0}", r.packets_per_node_minute),
        ),
        (
            "bytes sent/node/min (all)",
            format!("{:.0}", r.bytes_per_node_minute),
        ),
        (
            "store packets sent/node/min",
            format!("{:.0}", r.store_packets_per_node_minute),
        ),
        (
            "store bytes sent/node/min",
            format!("{:.0}", r.store_bytes_per_node_minute),
        ),
        ("items held per node", format!("{:.1}", r.held_per_node)),
        ("threads", r.threads.to_string()),
        ("simulated", format!("{:.0} s", r.simulated_seconds)),
        (
            "wall",
            format!(
                "{:.1} s ({:.0}x real time)",
                r.wall_seconds,
                r.simulated_seconds / r.wall_seconds.max(1e-9)
            ),
        ),
        (
            "peak RSS",
            format!("{:.0} MiB", r.peak_rss_bytes as f64 / 1048576.0),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<34} {v}");
    }
}
