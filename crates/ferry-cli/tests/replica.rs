//! Replication of pinned content between real `ferry up` processes on loopback (issue 10 item
//! 2). Every daemon runs with `--no-default-bootstrap --no-lan --bind 127.0.0.1` and
//! bootstraps from in-process infrastructure nodes on 127.0.0.1; processes are stopped by PID
//! (testkit). A publisher pins a file on storers (`[content] store_for_others = true`, checks
//! every 3 s); a fresh node fetches it with the publisher gone; a holder is stopped and the
//! pins repair the set. With one replica per download and a 3-second demand bucket, six
//! concurrent fetches make the leader add extra replicas, and they lapse once demand falls.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(60);

/// Loopback store limits (every node is one source prefix to a holder).
const LOOPBACK_STORE: &str = "[store]\nputs_per_minute = 1000\nper_source_items = 1000\n";

/// Starts `ferry up`; `storer`: 0 none, 1 by `[content] store_for_others`, 2 by
/// `--store-content`.
fn start(infra: &Infra, storer: u8) -> FerryUp {
    start_with(infra, storer, "")
}

/// [`start`] with `content` lines appended to the `[content]` table (storers only).
fn start_with(infra: &Infra, storer: u8, content: &str) -> FerryUp {
    let profile = tempfile::tempdir().expect("profile");
    let init = std::process::Command::new(ferry())
        .arg("--profile")
        .arg(profile.path())
        .arg("init")
        .output()
        .expect("init");
    assert!(init.status.success());
    let mut config = LOOPBACK_STORE.to_string();
    let mut args = infra.ferry_args();
    match storer {
        1 => config.push_str("[content]\nstore_for_others = true\nreplica_check_secs = 3\n"),
        2 => {
            config.push_str("[content]\nreplica_check_secs = 3\n");
            args.push("--store-content".into());
        }
        _ => {}
    }
    if storer != 0 {
        config.push_str(content);
    }
    std::fs::write(profile.path().join("config.toml"), config).expect("config");
    FerryUp::start_with_profile(ferry(), profile, &args).expect("up")
}

fn wait_capable(up: &FerryUp, n: u64) {
    let start = Instant::now();
    loop {
        let s = up
            .json(&["store", "status", "--json"])
            .expect("store status");
        if s["capable_nodes"].as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(start.elapsed() < STEP, "only {s} capable peers");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `up` holds a fetched replica of `id`.
fn holds(up: &FerryUp, id: &str) -> bool {
    up.json(&["pins", "--json"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|p| p["id"] == id && p["role"] != "publisher" && p["fetched"] == true)
}

fn holders(storers: &[Option<FerryUp>], id: &str) -> Vec<usize> {
    storers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_ref().is_some_and(|s| holds(s, id)))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn pinned_content_survives_publisher_and_holder_loss() {
    let t0 = Instant::now();
    let infra = Infra::new(2).expect("infra");
    let publisher = start(&infra, 0);
    let mut storers: Vec<Option<FerryUp>> = (0..5)
        .map(|i| Some(start(&infra, if i % 2 == 0 { 1 } else { 2 })))
        .collect();
    wait_capable(&publisher, 2);
    for s in storers.iter().flatten() {
        wait_capable(s, 2);
    }
    let src = tempfile::tempdir().expect("src");
    let file = src.path().join("pinned.bin");
    {
        let mut f = std::fs::File::create(&file).expect("f");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..(1 << 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).expect("w");
        }
    }
    // Publish (retrying until the provider record is stored), then pin (re-pinning while the
    // storer records are still spreading).
    let path = file.to_str().expect("utf-8");
    let id = loop {
        let v = publisher
            .json(&["publish", path, "--json"])
            .expect("publish");
        if v["announced"].as_u64().unwrap_or(0) > 0 {
            break v["id"].as_str().expect("id").to_string();
        }
        assert!(t0.elapsed() < STEP, "provider record never stored: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let pin_start = Instant::now();
    let mut last_pin = Instant::now() - Duration::from_secs(60);
    let first = loop {
        if last_pin.elapsed() > Duration::from_secs(15) {
            let v = publisher
                .json(&["publish", path, "--pin", "--json"])
                .expect("publish --pin");
            assert_eq!(v["id"], id.as_str());
            last_pin = Instant::now();
        }
        let h = holders(&storers, &id);
        if h.len() >= 4 || (h.len() >= 3 && pin_start.elapsed() > Duration::from_secs(30)) {
            break h;
        }
        assert!(
            pin_start.elapsed() < STEP,
            "only {h:?} hold it; publisher pins: {}",
            publisher.json(&["pins", "--json"]).expect("pins")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!(
        "pinned on storers {first:?} after {:?}; publisher sees {}",
        pin_start.elapsed(),
        publisher.json(&["pins", "--json"]).expect("pins")
    );
    assert!(first.len() >= 3);
    // The publisher leaves; a fresh node fetches from the replicas.
    assert!(publisher.stop().expect("stop publisher"));
    let fresh = start(&infra, 0);
    wait_capable(&fresh, 2);
    let out = tempfile::tempdir().expect("out");
    let o = fresh
        .cli(&[
            "fetch",
            &id,
            "--to",
            out.path().to_str().expect("utf-8"),
            "--json",
        ])
        .expect("fetch");
    if !o.status.success() {
        for (i, s) in storers.iter().enumerate() {
            if let Some(s) = s {
                for l in s.stderr.snapshot() {
                    if l.contains("replica")
                        || l.contains("provider")
                        || l.contains("guest")
                        || l.contains("fetch")
                    {
                        eprintln!("storer {i}: {l}");
                    }
                }
            }
        }
        panic!(
            "fetch without the publisher failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            fresh.stderr.snapshot().join("\n")
        );
    }
    assert_eq!(
        std::fs::read(&file).expect("src"),
        std::fs::read(out.path().join("pinned.bin")).expect("out")
    );
    eprintln!(
        "fetched from replicas: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // One holder leaves: the pins repair the set back to its size.
    let gone = first[0];
    let before = first.len();
    assert!(storers[gone].take().expect("holder").stop().expect("stop"));
    let repair_start = Instant::now();
    loop {
        let h = holders(&storers, &id);
        if h.len() >= before.min(4) {
            eprintln!(
                "repaired to {h:?} in {:?} (holder {gone} stopped)",
                repair_start.elapsed()
            );
            break;
        }
        if repair_start.elapsed() > Duration::from_secs(45) {
            for (i, s) in storers.iter().enumerate() {
                if let Some(s) = s {
                    eprintln!(
                        "storer {i} pins: {}",
                        s.json(&["pins", "--json"]).expect("pins")
                    );
                    for l in s.stderr.snapshot() {
                        if l.contains("replica")
                            || l.contains("holding")
                            || l.contains("pinned")
                            || l.contains("fetch")
                            || l.contains("provider")
                            || l.contains("content")
                        {
                            eprintln!("storer {i}: {l}");
                        }
                    }
                }
            }
            panic!("not repaired: {h:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(holders(&storers, &id).len() >= 3);
    // Unpinning on a holder releases its replica.
    let h = holders(&storers, &id);
    let s = storers[h[0]].as_ref().expect("holder");
    let o = s.cli(&["unpin", &id]).expect("unpin");
    assert!(o.status.success());
    assert!(!holds(s, &id));
    for s in storers.into_iter().flatten() {
        assert!(s.stop().expect("stop"));
    }
    assert!(fresh.stop().expect("stop"));
    eprintln!("replica test took {:?}", t0.elapsed());
}

/// Demand knobs of the demand test (storers started with `--store-content`, so checks every
/// 3 s): one replica per download, extras live 10 s unrenewed, 3 s buckets (18 s window).
const DEMAND: &str = "replica_downloads_per_replica = 1\nreplica_extra_ttl_secs = 10\n\
                      replica_demand_bucket_secs = 3\n";

fn write_file(path: &Path, words: usize, seed: u64) {
    let mut f = std::fs::File::create(path).expect("f");
    let mut x = seed;
    for _ in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).expect("w");
    }
}

#[test]
fn demand_adds_extra_replicas_and_they_lapse() {
    let t0 = Instant::now();
    let infra = Infra::new(2).expect("infra");
    let publisher = start(&infra, 0);
    let storers: Vec<Option<FerryUp>> = (0..7)
        .map(|_| Some(start_with(&infra, 2, DEMAND)))
        .collect();
    let fetchers: Vec<FerryUp> = (0..3).map(|_| start(&infra, 0)).collect();
    wait_capable(&publisher, 2);
    for s in storers.iter().flatten().chain(fetchers.iter()) {
        wait_capable(s, 2);
    }
    eprintln!("{} daemons up after {:?}", 11, t0.elapsed());
    let src = tempfile::tempdir().expect("src");
    let file = src.path().join("popular.bin");
    write_file(&file, 1 << 15, 0x2545_f491_4f6c_dd1d);
    let path = file.to_str().expect("utf-8");
    let id = loop {
        let v = publisher
            .json(&["publish", path, "--json"])
            .expect("publish");
        if v["announced"].as_u64().unwrap_or(0) > 0 {
            break v["id"].as_str().expect("id").to_string();
        }
        assert!(t0.elapsed() < STEP, "provider record never stored: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let pin_start = Instant::now();
    let mut last_pin = Instant::now() - Duration::from_secs(60);
    let base = loop {
        if last_pin.elapsed() > Duration::from_secs(15) {
            publisher
                .json(&["publish", path, "--pin", "--json"])
                .expect("publish --pin");
            last_pin = Instant::now();
        }
        let h = holders(&storers, &id);
        if h.len() >= 4 {
            break h;
        }
        assert!(
            pin_start.elapsed() < STEP,
            "only {h:?} hold it; publisher pins: {}",
            publisher.json(&["pins", "--json"]).expect("pins")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("pinned on storers {base:?} after {:?}", pin_start.elapsed());
    // Six peers fetch at once: the three fetchers and the three storers that hold nothing.
    let downloaders: Vec<&FerryUp> = fetchers
        .iter()
        .chain(
            storers
                .iter()
                .enumerate()
                .filter(|(i, _)| !base.contains(i))
                .filter_map(|(_, s)| s.as_ref()),
        )
        .collect();
    assert_eq!(downloaders.len(), 6);
    let fetch_start = Instant::now();
    std::thread::scope(|sc| {
        for d in &downloaders {
            let id = id.as_str();
            sc.spawn(move || {
                let out = tempfile::tempdir().expect("out");
                let o = d
                    .cli(&["fetch", id, "--to", out.path().to_str().expect("utf-8")])
                    .expect("fetch");
                assert!(
                    o.status.success(),
                    "fetch failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert_eq!(
                    std::fs::read(out.path().join("popular.bin"))
                        .expect("out")
                        .len(),
                    8 << 15
                );
            });
        }
    });
    eprintln!("six fetches done in {:?}", fetch_start.elapsed());
    // Demand (6 downloads per window, one replica per download): extras beyond the 4 pins.
    let mut peak = base.clone();
    loop {
        let h = holders(&storers, &id);
        if h.len() > peak.len() {
            peak = h;
        }
        if peak.len() > 4 && fetch_start.elapsed() > Duration::from_secs(4) {
            break;
        }
        if fetch_start.elapsed() > Duration::from_secs(25) {
            for (i, s) in storers.iter().enumerate() {
                if let Some(s) = s {
                    eprintln!(
                        "storer {i} pins: {}",
                        s.json(&["pins", "--json"]).expect("pins")
                    );
                    for l in s.stderr.snapshot() {
                        if l.contains("replica") || l.contains("holding") {
                            eprintln!("storer {i}: {l}");
                        }
                    }
                }
            }
            panic!("demand added no replica: {peak:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let grown = fetch_start.elapsed();
    eprintln!("holders grew {base:?} -> {peak:?} {grown:?} after the fetches started");
    assert!(peak.len() > base.len() && peak.len() > 4);
    // The new holders are demand extras, and the downloads were counted where they were served.
    let extras = storers
        .iter()
        .flatten()
        .filter(|s| {
            s.json(&["pins", "--json"])
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .any(|p| p["id"] == id.as_str() && p["role"] == "extra")
        })
        .count();
    let count = |up: &FerryUp, what: &str| {
        up.stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains(what) && l.contains(id.as_str()))
            .count()
    };
    let recorded: usize = storers
        .iter()
        .flatten()
        .map(|s| count(s, "replica download"))
        .sum();
    let forwarded = count(&publisher, "download forwarded to a pin");
    eprintln!(
        "{extras} extras; downloads counted: {recorded} by holders, {forwarded} forwarded by the publisher"
    );
    assert!(extras >= 1, "no storer holds an extra replica");
    assert!(
        recorded + forwarded >= 6,
        "{recorded} + {forwarded} downloads counted"
    );
    // No more downloads: after the 18 s window and the 10 s extra TTL, back to the pins.
    let fall_start = Instant::now();
    let after = loop {
        let h = holders(&storers, &id);
        if h.len() <= 4 {
            break h;
        }
        assert!(
            fall_start.elapsed() < Duration::from_secs(40),
            "extras did not lapse: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "back to {after:?} {:?} after the peak ({:?} after the fetches started)",
        fall_start.elapsed(),
        fetch_start.elapsed()
    );
    assert!(after.len() >= 3, "pins lost: {after:?}");
    for s in storers.into_iter().flatten().chain(fetchers) {
        assert!(s.stop().expect("stop"));
    }
    assert!(publisher.stop().expect("stop"));
    eprintln!("demand test took {:?}", t0.elapsed());
}
