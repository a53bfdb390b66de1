//! `ferry chain serve|fund`: the embedded settlement chain shared by separate processes over
//! JSON-RPC (payments.md §4.5). Loopback only; the server is killed by PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// A `ferry chain serve` child, killed (by its PID) on drop.
struct Serve {
    child: Child,
    ready: serde_json::Value,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Serve {
    let mut child = ferry()
        .args(["chain", "serve", "--listen", "127.0.0.1:0", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry chain serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready JSON");
    Serve { child, ready }
}

fn fund(url: &str, address: &str, wei: &str) -> serde_json::Value {
    let out = ferry()
        .args(["chain", "fund", address, wei, "--rpc-url", url, "--json"])
        .output()
        .expect("run ferry chain fund");
    assert!(
        out.status.success(),
        "fund failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fund JSON")
}

#[test]
fn serve_and_fund_share_one_ledger_across_processes_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.json");
    let ledger_s = ledger.to_str().expect("utf-8 path");
    let who = "0x00000000000000000000000000000000000000aa";
    let (hub, chain_id) = {
        let s = serve(&["--ledger", ledger_s, "--chain-id", "4242"]);
        assert_eq!(s.ready["chain_id"], 4242);
        let url = s.ready["url"].as_str().expect("url").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        // Two separate client processes fund the same account on the shared ledger.
        assert_eq!(fund(&url, who, "1000")["balance"], "1000");
        let r = fund(&url, who, "1000000000000000000000");
        assert_eq!(r["funded"], "1000000000000000000000");
        assert_eq!(r["balance"], "1000000000000000001000");
        (s.ready["hub"].clone(), s.ready["chain_id"].clone())
    };
    // Restarted from the ledger file: same chain, same hub (deterministic), same balances.
    let s = serve(&["--ledger", ledger_s]);
    assert_eq!(s.ready["hub"], hub);
    assert_eq!(s.ready["chain_id"], chain_id);
    let url = s.ready["url"].as_str().expect("url");
    assert_eq!(fund(url, who, "1")["balance"], "1000000000000000001001");

    // Bad input is an error, never a crash; a chain id that contradicts the file is refused.
    let bad = ferry()
        .args(["chain", "fund", who, "12abc", "--rpc-url", url])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    let other = ferry()
        .args(["chain", "serve", "--listen", "127.0.0.1:0"])
        .args(["--ledger", ledger_s, "--chain-id", "1"])
        .output()
        .expect("run");
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("chain id"));
}
