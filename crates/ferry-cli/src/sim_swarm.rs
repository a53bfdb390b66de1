//! `ferry sim replicate` and `ferry sim stream`: the swarm simulations of issue 10
//! (`ferry_sim::replicate`, `ferry_sim::stream`).

use anyhow::Result;

/// `ferry sim replicate` options.
#[derive(clap::Args, Debug)]
pub(crate) struct ReplicateArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Fraction of nodes replaced per hour (0.3 = 30 %/h).
    #[arg(long, default_value_t = 0.3, value_name = "PER_HOUR")]
    churn: f64,
    /// Simulated hours (after a 10-minute warm-up).
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Items pinned (default: one per node).
    #[arg(long)]
    items: Option<usize>,
    /// Fetches per hour of each of the 10 spike items during the 2-hour spike.
    #[arg(long, default_value_t = 800.0)]
    spike_per_hour: f64,
    /// Run seed (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `ferry sim stream` options.
#[derive(clap::Args, Debug)]
pub(crate) struct StreamArgs {
    /// Number of viewers.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Stream rate, kbit/s.
    #[arg(long, default_value_t = 500)]
    bitrate_kbps: u64,
    /// Streamed seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Viewers that tamper with the segments they forward.
    #[arg(long, default_value_t = 1)]
    tamperers: usize,
    /// Viewers feeding children that leave at half time.
    #[arg(long, default_value_t = 3)]
    leavers: usize,
    /// Run seed (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Runs the replication simulation and prints the hourly table (or JSON).
pub(crate) async fn replicate(a: ReplicateArgs) -> Result<()> {
    anyhow::ensure!(a.nodes >= 16, "--nodes must be at least 16");
    anyhow::ensure!((0.0..10.0).contains(&a.churn), "--churn must be in [0, 10)");
    anyhow::ensure!(
        a.hours > 0.0 && a.hours <= 1000.0,
        "--hours must be in (0, 1000]"
    );
    anyhow::ensure!(
        a.spike_per_hour >= 0.0,
        "--spike-per-hour must not be negative"
    );
    let mut s = ferry_sim::replicate::ReplicateScenario::new(a.nodes, a.hours, a.churn, a.seed);
    if let Some(n) = a.items {
        anyhow::ensure!(n >= 1, "--items must be at least 1");
        s.items = n;
        s.spike_items = s.spike_items.min(n);
    }
    s.spike_per_hour = a.spike_per_hour;
    let total = (s.warmup + s.duration).as_secs();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} simulated {pos}/{len} s [{bar:30}] {percent}%  elapsed {elapsed}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let r = tokio::task::spawn_blocking(move || {
        let r = ferry_sim::replicate::run(&s, |done, _| bar.set_position(done.as_secs()));
        bar.finish_and_clear();
        r
    })
    .await?;
    if a.json {
        return crate::print_json(&r);
    }
    println!(
        "{} nodes, {:.0} %/h churn, {} items, {:.0} h, seed {}",
        r.nodes,
        r.churn_per_hour * 100.0,
        r.items,
        r.hours,
        r.seed
    );
    println!("hour  items ≥3 live %  (lowest sample)  mean replicas  spike replicas  lost");
    for row in &r.rows {
        println!(
            "{:>4}  {:>14.2}  {:>15.2}  {:>13.2}  {:>14.1}  {:>4}",
            row.hour,
            row.healthy * 100.0,
            row.healthy_min * 100.0,
            row.mean_replicas,
            row.spike_replicas,
            row.lost
        );
    }
    println!(
        "whole run: {:.3} % of item-samples with ≥ 3 live replicas (lowest sample {:.2} %); {} lost",
        r.healthy * 100.0,
        r.healthy_min * 100.0,
        r.lost
    );
    println!(
        "spike items: {:.1} replicas before, {:.1} at peak, {:.1} at the end",
        r.spike_before, r.spike_peak, r.spike_end
    );
    println!(
        "{} fetches, {} nodes churned, {} recruit stores ({} refused), {:.1} packets/node/min, {:.1} s wall",
        r.fetches,
        r.churned,
        r.recruit_stores,
        r.stores_refused,
        r.packets_per_node_minute,
        r.wall_seconds
    );
    Ok(())
}

/// Runs the live-stream simulation and prints its figures (or JSON).
pub(crate) async fn stream(a: StreamArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=10_000).contains(&a.viewers),
        "--viewers must be in 1..=10000"
    );
    anyhow::ensure!(
        (8..=8000).contains(&a.bitrate_kbps),
        "--bitrate-kbps must be in 8..=8000"
    );
    anyhow::ensure!(
        (10..=3600).contains(&a.seconds),
        "--seconds must be in 10..=3600"
    );
    let mut s = ferry_sim::stream::StreamScenario::new(a.viewers, a.seconds, a.seed);
    s.bitrate_kbps = a.bitrate_kbps;
    s.tamperers = a.tamperers.min(a.viewers);
    s.leavers = a.leavers.min(a.viewers.saturating_sub(s.tamperers));
    if s.leavers == 0 {
        s.leave_at = None;
    }
    let r = tokio::task::spawn_blocking(move || ferry_sim::stream::run(&s)).await?;
    if a.json {
        return crate::print_json(&r);
    }
    let rows: Vec<(&str, String)> = vec![
        ("viewers", r.viewers.to_string()),
        ("bitrate", format!("{} kbit/s", r.bitrate_kbps)),
        ("streamed", format!("{:.0} s", r.seconds)),
        ("playing", r.playing.to_string()),
        (
            "start-up delay",
            format!(
                "median {} ms, p95 {} ms, max {} ms",
                r.startup_median_ms, r.startup_p95_ms, r.startup_max_ms
            ),
        ),
        (
            "stalls",
            format!(
                "{:.3} % of play time (worst viewer {:.2} %), {} episodes, {} segments skipped",
                r.stall_ratio * 100.0,
                r.stall_ratio_max * 100.0,
                r.stalls,
                r.skipped
            ),
        ),
        (
            "streamer upload",
            format!("{:.2} copies of the stream", r.streamer_copies),
        ),
        (
            "glass-to-glass",
            format!(
                "median {} ms, p95 {} ms",
                r.latency_median_ms, r.latency_p95_ms
            ),
        ),
        ("tampered rejected", r.tampered_rejected.to_string()),
        ("segments repaired (pull)", r.repaired.to_string()),
        (
            "parents left",
            format!(
                "{} ({} stripes orphaned, {} re-parented)",
                r.left, r.orphaned_stripes, r.recovered_stripes
            ),
        ),
        (
            "recovery",
            format!(
                "median {} ms, max {} ms; orphans stalled {} ms in the 10 s after",
                r.recovery_median_ms, r.recovery_max_ms, r.orphan_stall_ms
            ),
        ),
        ("deepest tree level", r.max_depth.to_string()),
        ("wall time", format!("{:.1} s", r.wall_seconds)),
    ];
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$}  {v}");
    }
    Ok(())
}
