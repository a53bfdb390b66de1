//! The NAT lab from tests: `lab/nat.sh` topologies ([`NatLab`]) and `ferry up` daemons inside
//! their namespaces ([`NetnsFerry`]), shared by `ferry-cli`'s `nat` and `tunnel` tests. Root
//! only; everything made here is removed on drop (namespaces by `nat.sh down PREFIX`, daemons
//! killed by PID).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// `lab/nat.sh` of this repository.
pub fn nat_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lab/nat.sh")
}

/// Why a lab test cannot run here (not root, or one of `tools` missing), if it cannot.
pub fn lab_skip_reason(tools: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables"].iter().chain(tools) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} not installed"));
        }
    }
    None
}

/// A topology built by `lab/nat.sh up TOPOLOGY PREFIX`; `down PREFIX` on drop. Its `KEY=VALUE`
/// output lines (namespace names, addresses) are in [`NatLab::var`].
#[derive(Debug)]
pub struct NatLab {
    prefix: String,
    vars: HashMap<String, String>,
}

impl NatLab {
    /// Builds `topology` (e.g. `cone:symmetric`) with namespaces named from `prefix`.
    ///
    /// # Errors
    /// `nat.sh` failed (its stderr is in the message); what it made is torn down.
    pub fn up(topology: &str, prefix: &str) -> anyhow::Result<Self> {
        let out = Command::new("bash")
            .arg(nat_sh())
            .args(["up", topology, prefix])
            .output()?;
        let lab = Self {
            prefix: prefix.to_string(),
            vars: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        anyhow::ensure!(
            out.status.success(),
            "nat.sh up {topology}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(lab)
    }

    /// A `KEY=VALUE` from `nat.sh up` ("" if absent).
    pub fn var(&self, k: &str) -> &str {
        self.vars.get(k).map_or("", String::as_str)
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(nat_sh())
            .args(["down", &self.prefix])
            .output();
    }
}

/// `ferry up` inside network namespace `ns` with its own temporary profile, bound to 0.0.0.0,
/// no default bootstrap, no LAN discovery; killed by PID on drop.
#[derive(Debug)]
pub struct NetnsFerry {
    ferry: PathBuf,
    ns: String,
    _child: KillOnDrop,
    profile: tempfile::TempDir,
}

impl NetnsFerry {
    /// Starts it on UDP `port` with `--bootstrap` for each of `bootstrap` and `extra` arguments;
    /// waits (≤ 20 s) until its API answers.
    ///
    /// # Errors
    /// `ferry init` failed, the process did not start, or its API never answered.
    pub fn start(
        ferry: &Path,
        ns: &str,
        port: u16,
        bootstrap: &[String],
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let init = Command::new(ferry)
            .arg("--profile")
            .arg(profile.path())
            .arg("init")
            .output()?;
        anyhow::ensure!(init.status.success(), "ferry init failed");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(ferry)
            .arg("--profile")
            .arg(profile.path())
            .args(["up", "--udp-port", &port.to_string()])
            .args(["--bind", "0.0.0.0", "--no-default-bootstrap", "--no-lan"]);
        for b in bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.args(extra);
        let child = KillOnDrop(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        let d = Self {
            ferry: ferry.to_path_buf(),
            ns: ns.to_string(),
            _child: child,
            profile,
        };
        let start = Instant::now();
        while d.json(&["status", "--json"]).is_none() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "ferry up in {ns} never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Runs `ferry --profile P ARGS` (from the host; the API is reached through the profile).
    pub fn cli(&self, args: &[&str]) -> Option<Output> {
        Command::new(&self.ferry)
            .arg("--profile")
            .arg(self.profile.path())
            .args(args)
            .output()
            .ok()
    }

    /// [`NetnsFerry::cli`] parsed as JSON; `None` on failure.
    pub fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A field of `ferry id --json` (`tox_id`, `public_key`).
    ///
    /// # Panics
    /// If the daemon does not answer (a test helper).
    pub fn id(&self, field: &str) -> String {
        self.json(&["id", "--json"]).expect("id")[field]
            .as_str()
            .expect("id field")
            .to_string()
    }

    /// Our DHT public key (`ferry status --json`).
    ///
    /// # Panics
    /// If the daemon does not answer (a test helper).
    pub fn dht_key(&self) -> String {
        self.json(&["status", "--json"]).expect("status")["dht_public_key"]
            .as_str()
            .expect("dht key")
            .to_string()
    }

    /// Friend `pk`'s `connection` in `ferry friend list` ("none", "udp", "tcp").
    pub fn path(&self, pk: &str) -> Option<String> {
        self.json(&["friend", "list", "--json"])
            .and_then(|v| v.as_array().cloned())
            .and_then(|l| {
                l.iter()
                    .find(|f| f["public_key"].as_str() == Some(pk))
                    .and_then(|f| f["connection"].as_str().map(str::to_string))
            })
    }

    /// Friend `pk` is online (by any path).
    pub fn online(&self, pk: &str) -> bool {
        self.path(pk).is_some_and(|c| c != "none")
    }

    /// An incoming message `text` from `pk` is in the history.
    pub fn has_message(&self, pk: &str, text: &str) -> bool {
        self.cli(&["messages", pk, "--json"]).is_some_and(|out| {
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["direction"] == "in" && v["text"] == text)
            })
        })
    }
}

/// Adds one counting rule per `spec` (chain and match arguments, e.g. `["INPUT", "-p", "udp"]`)
/// with `tool` (`iptables`/`ip6tables`) in namespace `ns`, matching packets that contain the
/// bytes `hex` (no `|`) and tagged with the comment `tag`. Returns whether the string match
/// works here (all rules added). Read the counts with [`string_counter_packets`]; the rules go
/// with the namespace.
pub fn add_string_counters(ns: &str, tool: &str, specs: &[&[&str]], hex: &str, tag: &str) -> bool {
    let pattern = format!("|{hex}|");
    specs.iter().all(|spec| {
        Command::new("ip")
            .args(["netns", "exec", ns, tool, "-w", "-I"])
            .args(*spec)
            .args(["-m", "string", "--algo", "bm", "--hex-string", &pattern])
            .args(["-m", "comment", "--comment", tag])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Sum of the packet counters of the rules tagged `tag` ([`add_string_counters`]) in `ns`'s
/// filter table.
pub fn string_counter_packets(ns: &str, tool: &str, tag: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, tool, "-w", "-L", "-v", "-x", "-n"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains(tag))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
