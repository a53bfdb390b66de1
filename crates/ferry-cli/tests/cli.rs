//! The `ferry` binary as a user runs it: real processes on loopback, temporary profiles.

use std::process::Command;

use ferry_testkit::{FerryUp, free_udp_port};

fn ferry() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

fn run(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(ferry())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .expect("run ferry")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_id_and_profile_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("profile");
    // No profile yet: a clear error, non-zero exit.
    let o = run(&p, &["id"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ferry init"), "{}", stderr(&o));

    let o = run(&p, &["init"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tox_id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(tox_id.len(), 76);
    assert!(tox_id.chars().all(|c| c.is_ascii_hexdigit()));

    let o = run(&p, &["id", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["tox_id"], tox_id);
    assert_eq!(v["public_key"].as_str().expect("pk"), &tox_id[..64]);

    // A second init refuses to destroy the identity; --force replaces it.
    let o = run(&p, &["init"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = run(&p, &["init", "--force"]);
    assert!(o.status.success());
    assert_ne!(String::from_utf8_lossy(&o.stdout).trim(), tox_id);

    // The environment variable works like --profile.
    let o = Command::new(ferry())
        .env("FERRY_PROFILE", &p)
        .args(["id"])
        .output()
        .expect("run");
    assert!(o.status.success());

    // API commands without a daemon: a clear error.
    for args in [&["status"][..], &["dht", "nodes", "--json"][..]] {
        let o = run(&p, args);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    }
}

#[test]
fn up_status_nodes_and_errors() {
    let node = FerryUp::start(std::path::Path::new(ferry()), &[]).expect("ferry up");
    let status = node.json(&["status", "--json"]).expect("status");
    assert_eq!(status["udp_port"], u64::from(node.port));
    assert_eq!(status["connection"], "none");
    assert_eq!(status["close_nodes"], 0);
    assert_eq!(status["dht_public_key"].as_str().expect("key").len(), 64);
    let nodes = node.json(&["dht", "nodes", "--json"]).expect("nodes");
    assert_eq!(nodes.as_array().expect("array").len(), 0);

    // A second daemon on the same profile is refused.
    let o = run(
        node.profile(),
        &[
            "up",
            "--bind",
            "127.0.0.1",
            "--udp-port",
            &free_udp_port().to_string(),
            "--no-lan",
            "--no-default-bootstrap",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already running"), "{}", stderr(&o));

    // Port in use, on another profile.
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(run(tmp.path(), &["init"]).status.success());
    let o = run(
        tmp.path(),
        &[
            "up",
            "--bind",
            "127.0.0.1",
            "--udp-port",
            &node.port.to_string(),
            "--no-lan",
            "--no-default-bootstrap",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already in use"), "{}", stderr(&o));

    // Bad key hex, at parse time and at the API.
    let o = run(node.profile(), &["dht", "lookup", "abcd"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("hex"), "{}", stderr(&o));
    let o = run(node.profile(), &["dht", "bootstrap", "127.0.0.1:1:nothex"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DHT public key"), "{}", stderr(&o));
    let o = run(node.profile(), &["up", "--bootstrap", "127.0.0.1:33445"]);
    assert!(!o.status.success());

    // `ferry stop` ends the daemon cleanly and removes its socket (SIGTERM: see `sigterm_stops_up`).
    let profile = node.profile().to_path_buf();
    assert!(node.stop().expect("stop"), "clean exit");
    assert!(!profile.join("ferry.sock").exists());
}

#[test]
fn two_daemons_find_each_other() {
    let a = FerryUp::start(std::path::Path::new(ferry()), &[]).expect("a");
    let a_key = a.json(&["status", "--json"]).expect("status")["dht_public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let boot = format!("127.0.0.1:{}:{}", a.port, a_key);
    let b =
        FerryUp::start(std::path::Path::new(ferry()), &["--bootstrap".into(), boot]).expect("b");
    let b_key = b.json(&["status", "--json"]).expect("status")["dht_public_key"]
        .as_str()
        .expect("key")
        .to_string();
    // b looks a up by DHT key through the CLI.
    let r = b
        .json(&["dht", "lookup", &a_key, "--timeout", "30", "--json"])
        .expect("lookup");
    assert_eq!(r["found"], true, "{r}");
    assert_eq!(r["address"], format!("127.0.0.1:{}", a.port));
    // And a lists b in its close list with the documented keys.
    let start = std::time::Instant::now();
    loop {
        let nodes = a.json(&["dht", "nodes", "--json"]).expect("nodes");
        let arr = nodes.as_array().expect("array");
        if let Some(n) = arr.iter().find(|n| n["public_key"] == b_key.as_str()) {
            assert_eq!(n["address"], format!("127.0.0.1:{}", b.port));
            assert!(n["last_seen_ms"].as_u64().is_some());
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "a never listed b: {nodes}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let s = b.json(&["status", "--json"]).expect("status");
    assert_eq!(s["connection"], "udp");
    assert!(s["close_nodes"].as_u64().expect("n") >= 1);
}

#[test]
fn devnet_runs_and_reports() {
    let o = Command::new(ferry())
        .args([
            "devnet",
            "--nodes",
            "6",
            "--seconds",
            "60",
            "--until-resolved",
            "--json",
        ])
        .output()
        .expect("devnet");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["nodes"], 6);
    assert_eq!(v["lookups"], 30);
    assert_eq!(v["lookups_resolved"], 30);
    assert!(stderr(&o).contains("lookups resolved"));
}

#[test]
fn sigterm_stops_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(run(tmp.path(), &["init"]).status.success());
    let mut child = Command::new(ferry())
        .arg("--profile")
        .arg(tmp.path())
        .args([
            "up",
            "--bind",
            "127.0.0.1",
            "--udp-port",
            &free_udp_port().to_string(),
            "--no-lan",
            "--no-default-bootstrap",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let sock = tmp.path().join("ferry.sock");
    let start = std::time::Instant::now();
    while !run(tmp.path(), &["status"]).status.success() {
        assert!(start.elapsed().as_secs() < 20, "daemon never came up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed().as_secs() > 10 {
            let _ = child.kill();
            panic!("ferry up ignored SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "control socket removed");
}
