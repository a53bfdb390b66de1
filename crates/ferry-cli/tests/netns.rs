//! Tests in real network namespaces (root and iproute2 required; CI runs as root).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{KillOnDrop, NetnsPair};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

fn json(profile: &Path, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new(ferry())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Two nodes on one LAN (two namespaces joined by a veth pair), no bootstrap node at all: LAN
/// discovery (on by default) broadcasts to the subnet's broadcast address on port 33445 and the
/// nodes find each other. With `--no-lan` on both, they stay alone.
#[test]
fn lan_discovery_finds_a_peer_without_bootstrap() {
    let net = NetnsPair::new("ferrylan", 1).expect("namespaces (run as root with iproute2)");
    let found = run_pair(&net, &[]).expect("run");
    assert!(found, "LAN discovery did not connect the two nodes");
    drop(net);
    let net = NetnsPair::new("ferrynolan", 2).expect("namespaces");
    let found = run_pair(&net, &["--no-lan"]).expect("run");
    assert!(!found, "nodes with --no-lan found each other");
}

/// Starts `ferry up` on port 33445 in each namespace; returns whether each listed the other in
/// its close list within 30 s (`extra` is passed to both).
fn run_pair(net: &NetnsPair, extra: &[&str]) -> anyhow::Result<bool> {
    let pa = tempfile::tempdir()?;
    let pb = tempfile::tempdir()?;
    let mut procs = Vec::new();
    for (ns, profile) in [(&net.a, pa.path()), (&net.b, pb.path())] {
        let init = Command::new(ferry())
            .arg("--profile")
            .arg(profile)
            .arg("init")
            .output()?;
        anyhow::ensure!(init.status.success(), "init failed");
        let child = NetnsPair::command(ns, ferry())
            .arg("--profile")
            .arg(profile)
            .args(["up", "--udp-port", "33445", "--no-default-bootstrap"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        procs.push(KillOnDrop(child));
    }
    let start = Instant::now();
    let a_ip = format!("{}:33445", net.a_ip);
    let b_ip = format!("{}:33445", net.b_ip);
    let listed = |profile: &Path, addr: &str| {
        json(profile, &["dht", "nodes", "--json"])
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|nodes| nodes.iter().any(|n| n["address"] == addr))
    };
    while start.elapsed() < Duration::from_secs(30) {
        if listed(pa.path(), &b_ip) && listed(pb.path(), &a_ip) {
            eprintln!(
                "MEASURE LAN discovery connected two nodes after {:?}",
                start.elapsed()
            );
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}
