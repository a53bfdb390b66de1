//! `ferry devnet --netns` (issue 7 item 8): the command builds client / exit / server network
//! namespaces, runs an exit node and a client, pings the server and downloads from it through
//! the exit, and tears everything down.
//!
//! Asserts, from `--json`: at least 4 of 5 pings answered, the 8 MiB download arrived complete
//! with every byte checked (`download.ok`), the exit handed out a 100.64.0.0/10 address; and
//! afterwards none of the run's namespaces is left. The whole run is bounded at 60 s (the child
//! is killed by PID past that).
//!
//! Needs root, iproute2, iptables, ping and `/dev/net/tun`; skipped with a message otherwise.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::KillOnDrop;
use ferry_testkit::lab::lab_skip_reason;

const BUDGET: Duration = Duration::from_secs(60);

#[test]
fn devnet_netns_pings_and_downloads_through_an_exit() {
    if let Some(why) = lab_skip_reason(&["ping"]) {
        eprintln!("SKIP devnet_netns_pings_and_downloads_through_an_exit: {why}");
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP devnet_netns_pings_and_downloads_through_an_exit: no /dev/net/tun");
        return;
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out_path = out_dir.path().join("out.json");
    let err_path = out_dir.path().join("err.txt");
    let start = Instant::now();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["devnet", "--netns", "--json", "--download-mib", "8"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("out"))
            .stderr(std::fs::File::create(&err_path).expect("err"))
            .spawn()
            .expect("ferry devnet --netns"),
    );
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > BUDGET {
            // SIGTERM first: the command tears its namespaces and daemons down on it.
            let _ = Command::new("kill")
                .args(["-TERM", &child.0.id().to_string()])
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) && matches!(child.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!(
                "ferry devnet --netns took more than {BUDGET:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    eprintln!("{stderr}");
    eprintln!("MEASURE devnet --netns: {:?}", start.elapsed());
    assert!(status.success(), "ferry devnet --netns failed:\n{stderr}");
    let out = std::fs::read_to_string(&out_path).expect("stdout");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert!(
        v["ping"]["received"].as_u64().unwrap_or(0) >= 4,
        "ping through the exit: {}",
        v["ping"]
    );
    assert_eq!(v["download"]["ok"], true, "download: {}", v["download"]);
    assert_eq!(v["download"]["bytes"], 8u64 << 20);
    assert!(
        v["client_address_v4"]
            .as_str()
            .is_some_and(|a| a.starts_with("100.")),
        "client address: {}",
        v["client_address_v4"]
    );
    assert!(stderr.contains("torn down"), "{stderr}");
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    for ns in v["namespaces"].as_array().expect("namespaces") {
        let ns = ns.as_str().expect("name");
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "namespace {ns} left behind"
        );
    }
}
