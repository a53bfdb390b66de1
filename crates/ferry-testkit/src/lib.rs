//! Test support for ferry's process-level and interop tests (dev-only, never shipped):
//!
//! * [`toxpeer_path`] builds `c/toxpeer.c` against the system's c-toxcore (Debian
//!   `libtoxcore-dev` 0.2.18) once per source version, and [`ToxPeer`] runs it on loopback;
//! * [`FerryUp`] runs `ferry up` on loopback with its own temporary profile;
//! * [`free_udp_port`] finds a free loopback port.
//!
//! Every process started here is killed by PID when its handle drops; nothing is killed by name.
//! All traffic stays on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const TOXPEER_SOURCE: &str = include_str!("../c/toxpeer.c");

/// Builds (once per source version) and returns the path of the c-toxcore test peer.
///
/// # Errors
/// When `pkg-config` cannot find `toxcore` or the C compiler fails: install `libtoxcore-dev`,
/// `pkg-config` and `gcc` (the README's test command does).
pub fn toxpeer_path() -> anyhow::Result<PathBuf> {
    let hash = TOXPEER_SOURCE.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let dir = std::env::temp_dir().join(format!("ferry-toxpeer-{hash:016x}"));
    let bin = dir.join("toxpeer");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir)?;
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "toxcore"])
        .output()
        .context("running pkg-config (install pkg-config and libtoxcore-dev)")?;
    if !flags.status.success() {
        bail!(
            "pkg-config finds no toxcore: install libtoxcore-dev ({})",
            String::from_utf8_lossy(&flags.stderr)
        );
    }
    let src = dir.join(format!("toxpeer-{}.c", std::process::id()));
    std::fs::write(&src, TOXPEER_SOURCE)?;
    let tmp_bin = dir.join(format!("toxpeer.{}.tmp", std::process::id()));
    let mut cmd = Command::new("cc");
    cmd.args(["-O1", "-Wall", "-o"]).arg(&tmp_bin).arg(&src);
    cmd.args(String::from_utf8_lossy(&flags.stdout).split_whitespace());
    cmd.args(["-ldl", "-rdynamic"]);
    let out = cmd.output().context("running cc")?;
    if !out.status.success() {
        bail!(
            "building toxpeer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Atomic: parallel test processes may build at once.
    std::fs::rename(&tmp_bin, &bin)?;
    let _ = std::fs::remove_file(&src);
    Ok(bin)
}

/// A free UDP port on 127.0.0.1 (bound and released; a small race is accepted in tests).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Lines a child printed on stdout, collected by a reader thread.
#[derive(Clone, Debug, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, stdout: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }

    /// A copy of every line so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `pred` and returns it.
    ///
    /// # Errors
    /// On timeout, with the lines seen.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| pred(l)) {
                return Ok(l.clone());
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?}; lines: {:?}", self.snapshot());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running c-toxcore test peer (killed by PID on drop).
#[derive(Debug)]
pub struct ToxPeer {
    child: Child,
    /// Its DHT public key, 64 upper-case hex.
    pub dht_id: String,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
    /// Its Tox ID (`tox_self_get_address`), 76 upper-case hex.
    pub address: String,
    /// Its stdout lines (`RX ip:port kind`, `CONNECTION n`).
    pub lines: Lines,
}

impl ToxPeer {
    /// Starts a peer on `port` that bootstraps from `bootstrap` (`(port, DHT key hex)` on 127.0.0.1).
    ///
    /// # Errors
    /// Build or start failures.
    pub fn start(port: u16, bootstrap: &[(u16, String)]) -> anyhow::Result<Self> {
        Self::start_with(port, bootstrap, &[])
    }

    /// Like [`ToxPeer::start`], with extra toxpeer arguments (`--friend-request ADDRESS MSG`,
    /// `--friend PK`, see `c/toxpeer.c`).
    ///
    /// # Errors
    /// Build or start failures.
    pub fn start_with(
        port: u16,
        bootstrap: &[(u16, String)],
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(toxpeer_path()?);
        cmd.args(["--port", &port.to_string(), "--seconds", "600"]);
        for (p, key) in bootstrap {
            cmd.args(["--bootstrap", "127.0.0.1", &p.to_string(), key]);
        }
        cmd.args(extra);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting toxpeer")?;
        let lines = Lines::default();
        lines.collect(child.stdout.take().context("stdout")?);
        let mut peer = Self {
            child,
            dht_id: String::new(),
            port,
            address: String::new(),
            lines,
        };
        let id = peer
            .lines
            .wait_for(Duration::from_secs(10), |l| l.starts_with("DHT_ID "))?;
        peer.dht_id = id["DHT_ID ".len()..].trim().to_string();
        let p = peer
            .lines
            .wait_for(Duration::from_secs(10), |l| l.starts_with("PORT "))?;
        peer.port = p["PORT ".len()..].trim().parse()?;
        let a = peer
            .lines
            .wait_for(Duration::from_secs(10), |l| l.starts_with("ADDRESS "))?;
        peer.address = a["ADDRESS ".len()..].trim().to_string();
        peer.lines
            .wait_for(Duration::from_secs(10), |l| l == "READY")?;
        Ok(peer)
    }

    /// Whether a datagram of `kind` arrived from 127.0.0.1:`port`.
    pub fn received_from(&self, port: u16, kind: u8) -> bool {
        let want = format!("RX 127.0.0.1:{port} {kind}");
        self.lines.snapshot().contains(&want)
    }

    /// What c-toxcore's `tox_self_get_address` gives for this secret key and nospam.
    ///
    /// # Errors
    /// Build or run failures.
    pub fn address_of(secret_key_hex: &str, nospam_hex: &str) -> anyhow::Result<String> {
        let out = Command::new(toxpeer_path()?)
            .args(["--address-of", secret_key_hex, nospam_hex])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("ADDRESS "))
            .context("no ADDRESS line")?;
        Ok(line["ADDRESS ".len()..].trim().to_string())
    }
}

impl Drop for ToxPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `ferry up` process on 127.0.0.1 with its own temporary profile (killed by PID on drop).
#[derive(Debug)]
pub struct FerryUp {
    child: Option<Child>,
    ferry: PathBuf,
    profile: tempfile::TempDir,
    /// The UDP port it was given.
    pub port: u16,
    /// Its stderr lines.
    pub stderr: Lines,
}

impl FerryUp {
    /// Creates a profile (`ferry init`) and starts `ferry up --bind 127.0.0.1 --udp-port PORT
    /// --no-lan --no-default-bootstrap` plus `extra` arguments; waits until the control API answers.
    ///
    /// # Errors
    /// Start failures or a daemon that never answers.
    pub fn start(ferry: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let init = Command::new(ferry)
            .arg("--profile")
            .arg(profile.path())
            .arg("init")
            .output()?;
        if !init.status.success() {
            bail!(
                "ferry init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let port = free_udp_port();
        let mut child = Command::new(ferry)
            .arg("--profile")
            .arg(profile.path())
            .args([
                "up",
                "--bind",
                "127.0.0.1",
                "--udp-port",
                &port.to_string(),
                "--no-lan",
                "--no-default-bootstrap",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = Lines::default();
        stderr.collect(child.stderr.take().context("stderr")?);
        let up = Self {
            child: Some(child),
            ferry: ferry.to_path_buf(),
            profile,
            port,
            stderr,
        };
        let start = Instant::now();
        loop {
            let out = up.cli(&["status", "--json"])?;
            if out.status.success() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("ferry up never answered: {:?}", up.stderr.snapshot());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(up)
    }

    /// The profile directory.
    pub fn profile(&self) -> &Path {
        self.profile.path()
    }

    /// Runs a `ferry` CLI command against this daemon's profile.
    ///
    /// # Errors
    /// When the binary cannot be run.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.ferry)
            .arg("--profile")
            .arg(self.profile.path())
            .args(args)
            .output()?)
    }

    /// Runs a CLI command that must succeed and parses its stdout as JSON.
    ///
    /// # Errors
    /// A failing command or non-JSON output.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "ferry {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Stops the daemon with `ferry stop` and waits for it; returns whether it exited with success
    /// (a daemon still running after 10 s is killed by PID and counts as failure).
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn stop(mut self) -> anyhow::Result<bool> {
        let _ = self.cli(&["stop"]);
        let mut child = self.child.take().context("already stopped")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FerryUp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A network namespace created for one test, with a veth link to a peer namespace; deleted (with
/// everything in it) on drop. Needs root and iproute2. Traffic never leaves the pair.
#[derive(Debug)]
pub struct NetnsPair {
    /// Name of the first namespace.
    pub a: String,
    /// Name of the second namespace.
    pub b: String,
    /// Address of the first namespace's veth end (`/24`).
    pub a_ip: String,
    /// Address of the second namespace's veth end (`/24`).
    pub b_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl NetnsPair {
    /// Creates namespaces `<tag>-<pid>-a` and `-b` joined by a veth pair on 10.77.`subnet`.0/24,
    /// loopback up in both.
    ///
    /// # Errors
    /// When not root or iproute2 is missing.
    pub fn new(tag: &str, subnet: u8) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let a = format!("{tag}-{pid}-a");
        let b = format!("{tag}-{pid}-b");
        let pair = Self {
            a: a.clone(),
            b: b.clone(),
            a_ip: format!("10.77.{subnet}.1"),
            b_ip: format!("10.77.{subnet}.2"),
        };
        ip(&["netns", "add", &a]).context("creating a network namespace needs root")?;
        ip(&["netns", "add", &b])?;
        let va = format!("fa{pid}");
        let vb = format!("fb{pid}");
        ip(&[
            "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
        ])?;
        for (ns, dev, addr) in [(&a, &va, &pair.a_ip), (&b, &vb, &pair.b_ip)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// A child process killed by PID (and waited for) on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
