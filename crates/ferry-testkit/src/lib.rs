//! Test support for ferry's process-level and interop tests (dev-only, never shipped):
//!
//! * [`toxpeer_path`] builds `c/toxpeer.c` against the system's c-toxcore (Debian
//!   `libtoxcore-dev` 0.2.18) once per source version; [`ToxPeer`] runs it as a plain DHT node on
//!   loopback and [`ToxClient`] as a scriptable Tox client (friends, messages, custom packets,
//!   save files) driven by line commands;
//! * [`FerryUp`] runs `ferry up` on loopback with its own temporary profile;
//! * [`free_udp_port`] / [`free_tcp_port`] find a free loopback port.
//!
//! Every process started here is killed by PID when its handle drops; nothing is killed by name.
//! All traffic stays on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod lab;

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

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted in tests).
pub fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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
            .stdin(Stdio::null())
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

/// How to start a [`ToxClient`] (all off / empty by default: a UDP node on a random loopback
/// port with no friends, no bootstrap nodes and a fresh identity).
#[derive(Clone, Debug, Default)]
pub struct ToxClientOptions {
    /// UDP port on 127.0.0.1 (0: any free port in c-toxcore's range).
    pub port: u16,
    /// A Tox save to load (`--load`); encrypted saves need `passphrase`.
    pub load: Option<PathBuf>,
    /// The toxencryptsave passphrase of `load`.
    pub passphrase: Option<String>,
    /// Disable UDP (`--udp-disabled`): only TCP relays then.
    pub udp_disabled: bool,
    /// Run a TCP relay server on this port (`--tcp-port`).
    pub tcp_port: Option<u16>,
    /// Accept every friend request (`--auto-accept`).
    pub auto_accept: bool,
    /// Sleep between `tox_iterate` calls, ms (default: `tox_iteration_interval`).
    pub iterate_ms: Option<u32>,
    /// DHT bootstrap nodes: (IP, UDP port, DHT public key hex).
    pub bootstrap: Vec<(String, u16, String)>,
    /// TCP relays: (IP, TCP port, public key hex).
    pub tcp_relays: Vec<(String, u16, String)>,
    /// Exit after this many seconds (default 600, a safety net for leaked processes).
    pub seconds: Option<u32>,
    /// Enable c-toxcore's UDP hole punching (`--hole-punching`; off by default).
    pub hole_punching: bool,
    /// Run inside this network namespace (`ip netns exec NS toxpeer …`; needs root). The client
    /// then binds all addresses of that namespace, not only loopback.
    pub netns: Option<String>,
}

/// One line of a [`ToxClient::friends`] listing (`FRIEND <n> <pk> <none|tcp|udp> <name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToxFriend {
    /// c-toxcore's friend number.
    pub number: u32,
    /// The friend's long-term public key, 64 upper-case hex.
    pub public_key: String,
    /// `none`, `tcp` or `udp`.
    pub connection: String,
    /// The friend's name (control characters shown as spaces).
    pub name: String,
}

/// A running scriptable c-toxcore client (`toxpeer` fed with line commands on stdin; see the
/// command and event list at the top of `c/toxpeer.c`). Killed by PID on drop.
///
/// Every stdout line is collected by a reader thread. [`ToxClient::wait_for`] returns the first
/// line with a prefix that no earlier `wait_for` returned, so events can be awaited in any order
/// and none is returned twice; [`ToxClient::request`] sends a command and waits for its reply.
#[derive(Debug)]
pub struct ToxClient {
    child: Child,
    stdin: ChildStdin,
    /// Every stdout line so far.
    pub lines: Lines,
    stderr: Lines,
    consumed: std::collections::HashSet<usize>,
    /// The Tox ID (`tox_self_get_address`), 76 upper-case hex.
    pub address: String,
    /// The DHT public key, 64 upper-case hex.
    pub dht_id: String,
    /// The UDP port on 127.0.0.1 (0 with UDP disabled).
    pub port: u16,
}

impl ToxClient {
    /// Starts a client and waits for its `READY` line.
    ///
    /// # Errors
    /// Build or start failures, or a client that exits before `READY` (bad save, wrong
    /// passphrase: the error carries its stderr).
    pub fn spawn(opts: &ToxClientOptions) -> anyhow::Result<Self> {
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(toxpeer_path()?);
                c
            }
            None => Command::new(toxpeer_path()?),
        };
        cmd.args(["--port", &opts.port.to_string()]);
        if opts.hole_punching {
            cmd.arg("--hole-punching");
        }
        cmd.args(["--seconds", &opts.seconds.unwrap_or(600).to_string()]);
        if let Some(p) = &opts.load {
            cmd.arg("--load").arg(p);
        }
        if let Some(p) = &opts.passphrase {
            cmd.args(["--passphrase", p]);
        }
        if opts.udp_disabled {
            cmd.arg("--udp-disabled");
        }
        if let Some(p) = opts.tcp_port {
            cmd.args(["--tcp-port", &p.to_string()]);
        }
        if opts.auto_accept {
            cmd.arg("--auto-accept");
        }
        if let Some(ms) = opts.iterate_ms {
            cmd.args(["--iterate-ms", &ms.to_string()]);
        }
        for (ip, port, key) in &opts.bootstrap {
            cmd.args(["--bootstrap", ip, &port.to_string(), key]);
        }
        for (ip, port, key) in &opts.tcp_relays {
            cmd.args(["--tcp-relay", ip, &port.to_string(), key]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting toxpeer")?;
        let lines = Lines::default();
        lines.collect(child.stdout.take().context("stdout")?);
        let stderr = Lines::default();
        stderr.collect(child.stderr.take().context("stderr")?);
        let stdin = child.stdin.take().context("stdin")?;
        let mut client = Self {
            child,
            stdin,
            lines,
            stderr,
            consumed: Default::default(),
            address: String::new(),
            dht_id: String::new(),
            port: 0,
        };
        let start = Instant::now();
        loop {
            if client.lines.snapshot().iter().any(|l| l == "READY") {
                break;
            }
            if let Some(status) = client.child.try_wait()? {
                // Give the reader threads a moment to drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "toxpeer exited ({status}) before READY: {}",
                    client.stderr.snapshot().join("\n")
                );
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("toxpeer never printed READY: {:?}", client.lines.snapshot());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let field = |prefix: &str| -> anyhow::Result<String> {
            let all = client.lines.snapshot();
            let l = all
                .iter()
                .find(|l| l.starts_with(prefix))
                .with_context(|| format!("no {prefix}line"))?;
            Ok(l[prefix.len()..].trim().to_string())
        };
        client.address = field("ADDRESS ")?;
        client.dht_id = field("DHTKEY ")?;
        client.port = field("PORT ")?.parse()?;
        Ok(client)
    }

    /// This client as a bootstrap entry for another one: (`127.0.0.1`, UDP port, DHT key).
    pub fn as_bootstrap(&self) -> (String, u16, String) {
        ("127.0.0.1".to_string(), self.port, self.dht_id.clone())
    }

    /// The long-term public key: the first 64 hex digits of the Tox ID.
    pub fn public_key(&self) -> &str {
        &self.address[..64]
    }

    /// Writes one command line (a newline is appended).
    ///
    /// # Errors
    /// When the process has gone.
    pub fn send_command(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}").context("writing to toxpeer")?;
        self.stdin.flush().context("flushing toxpeer stdin")?;
        Ok(())
    }

    /// Waits for the first line starting with `prefix` that no earlier call returned; returns it
    /// whole and marks it returned.
    ///
    /// # Errors
    /// On timeout, with every line seen.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_from(0, timeout, |l| l.starts_with(prefix))
            .with_context(|| format!("waiting for {prefix:?}"))
    }

    fn wait_from(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let found = {
                let all = self.lines.0.lock().unwrap();
                all.iter()
                    .enumerate()
                    .skip(from)
                    .find(|(i, l)| !self.consumed.contains(i) && pred(l))
                    .map(|(i, l)| (i, l.clone()))
            };
            if let Some((i, l)) = found {
                self.consumed.insert(i);
                return Ok(l);
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?}; lines: {:?}; stderr: {:?}",
                    self.lines.snapshot(),
                    self.stderr.snapshot()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `command` and waits (10 s) for its reply: the first later line starting with
    /// `reply_prefix` (returned) or `ERROR ` (an error).
    ///
    /// # Errors
    /// An `ERROR` reply, a timeout or a dead process.
    pub fn request(&mut self, command: &str, reply_prefix: &str) -> anyhow::Result<String> {
        let from = self.lines.0.lock().unwrap().len();
        self.send_command(command)?;
        let line = self
            .wait_from(from, Duration::from_secs(10), |l| {
                l.starts_with(reply_prefix) || l.starts_with("ERROR ")
            })
            .with_context(|| format!("reply to {command:?}"))?;
        if line.starts_with("ERROR ") && !reply_prefix.starts_with("ERROR") {
            bail!("{command:?} failed: {line}");
        }
        Ok(line)
    }

    /// `ADD <tox id> <message>`: sends a friend request; returns the friend number.
    ///
    /// # Errors
    /// c-toxcore refused (bad checksum, own key, already added...).
    pub fn add_friend(&mut self, tox_id: &str, message: &str) -> anyhow::Result<u32> {
        let l = self.request(&format!("ADD {tox_id} {message}"), "FRIEND_ADDED ")?;
        Ok(l["FRIEND_ADDED ".len()..].trim().parse()?)
    }

    /// `FRIENDS`: c-toxcore's friend list.
    ///
    /// # Errors
    /// A timeout or malformed lines.
    pub fn friends(&mut self) -> anyhow::Result<Vec<ToxFriend>> {
        let from = self.lines.0.lock().unwrap().len();
        self.send_command("FRIENDS")?;
        let mut out = Vec::new();
        loop {
            let l = self.wait_from(from, Duration::from_secs(10), |l| {
                l.starts_with("FRIEND ") || l == "END"
            })?;
            if l == "END" {
                return Ok(out);
            }
            let mut parts = l.splitn(5, ' ');
            parts.next();
            let number = parts.next().context("number")?.parse()?;
            let public_key = parts.next().context("pk")?.to_string();
            let connection = parts.next().context("connection")?.to_string();
            let name = parts.next().unwrap_or("").to_string();
            out.push(ToxFriend {
                number,
                public_key,
                connection,
                name,
            });
        }
    }

    /// `SAVE <path>` (or `SAVE_ENCRYPTED <path> <passphrase>` when `passphrase` is given).
    ///
    /// # Errors
    /// c-toxcore could not write or encrypt.
    pub fn save(&mut self, path: &Path, passphrase: Option<&str>) -> anyhow::Result<()> {
        let path = path.to_str().context("non-UTF-8 path")?;
        let cmd = match passphrase {
            Some(p) => format!("SAVE_ENCRYPTED {path} {p}"),
            None => format!("SAVE {path}"),
        };
        self.request(&cmd, "SAVED ")?;
        Ok(())
    }
}

impl Drop for ToxClient {
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
    extra: Vec<String>,
    /// The IP `--bind` gets (127.0.0.1 unless started by [`FerryUp::start_bound`]).
    bind: String,
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
        Self::start_with_profile(ferry, profile, extra)
    }

    /// Starts `ferry up` (same arguments as [`Self::start`]) on an existing profile directory,
    /// e.g. one made by `ferry import`.
    ///
    /// # Errors
    /// Start failures or a daemon that never answers.
    pub fn start_with_profile(
        ferry: &Path,
        profile: tempfile::TempDir,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut up = Self {
            child: None,
            ferry: ferry.to_path_buf(),
            profile,
            port: free_udp_port(),
            stderr: Lines::default(),
            extra: extra.to_vec(),
            bind: "127.0.0.1".into(),
        };
        up.spawn()?;
        Ok(up)
    }

    /// Like [`FerryUp::start_with_profile`] with `--bind BIND` instead of 127.0.0.1 (another
    /// loopback address, e.g. 127.0.2.1, is another source /24 to a store's quotas).
    ///
    /// # Errors
    /// Start failures or a daemon that never answers.
    pub fn start_bound(
        ferry: &Path,
        profile: tempfile::TempDir,
        bind: std::net::Ipv4Addr,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(bind.is_loopback(), "{bind} is not a loopback address");
        let mut up = Self {
            child: None,
            ferry: ferry.to_path_buf(),
            profile,
            port: free_udp_port(),
            stderr: Lines::default(),
            extra: extra.to_vec(),
            bind: bind.to_string(),
        };
        up.spawn()?;
        Ok(up)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.ferry)
            .arg("--profile")
            .arg(self.profile.path())
            .args([
                "up",
                "--bind",
                &self.bind,
                "--udp-port",
                &self.port.to_string(),
                "--no-lan",
                "--no-default-bootstrap",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        self.stderr = Lines::default();
        self.stderr.collect(child.stderr.take().context("stderr")?);
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let out = self.cli(&["status", "--json"])?;
            if out.status.success() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("ferry up never answered: {:?}", self.stderr.snapshot());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon like [`Self::stop`] (which must succeed) and hands back its profile
    /// directory, e.g. to export it.
    ///
    /// # Errors
    /// A daemon that did not stop cleanly.
    pub fn stop_keep_profile(mut self) -> anyhow::Result<tempfile::TempDir> {
        let profile = std::mem::replace(&mut self.profile, tempfile::tempdir()?);
        let ferry = self.ferry.clone();
        let _ = Command::new(&ferry)
            .arg("--profile")
            .arg(profile.path())
            .arg("stop")
            .output();
        let mut child = self.child.take().context("not running")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(status.success(), "ferry up exited with {status}");
                return Ok(profile);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("ferry up did not stop within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (no chance to clean up), by PID, and waits for it.
    ///
    /// # Errors
    /// When it is not running or cannot be waited for.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let mut c = self.child.take().context("not running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// Starts the daemon again on the same profile, port and arguments (after [`Self::kill9`]).
    ///
    /// # Errors
    /// Start failures.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "still running");
        self.spawn()
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

    /// Runs a CLI command until it succeeds (the DHT may still be converging), every 500 ms
    /// for at most `within`; returns its JSON.
    ///
    /// # Errors
    /// The last failure once `within` has passed.
    pub fn retry_json(&self, args: &[&str], within: Duration) -> anyhow::Result<serde_json::Value> {
        let start = Instant::now();
        loop {
            match self.json(args) {
                Ok(v) => return Ok(v),
                Err(e) if start.elapsed() >= within => return Err(e.context(format!("{args:?}"))),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Waits (at most `within`) until the daemon knows at least `n` store-capable peers
    /// (`ferry store status`).
    ///
    /// # Errors
    /// Still fewer after `within`, with the last status.
    pub fn wait_store_capable(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let s = self.json(&["store", "status", "--json"])?;
            if s["capable_nodes"].as_u64().unwrap_or(0) >= n {
                return Ok(());
            }
            if start.elapsed() >= within {
                bail!("only {s} capable peers after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A fresh profile (`ferry init`) whose `config.toml` holds `config`.
    ///
    /// # Errors
    /// `ferry init` or the write failing.
    pub fn profile_with_config(ferry: &Path, config: &str) -> anyhow::Result<tempfile::TempDir> {
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
        std::fs::write(profile.path().join("config.toml"), config)?;
        Ok(profile)
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

/// A network of in-process ferry nodes (their own tokio runtime, loopback sockets, LAN discovery
/// off), all bootstrapped to node 0: the DHT, onion relays and announce stores that the
/// processes under test (ferry daemons, c-toxcore clients) use. Shut down on drop.
pub struct Infra {
    rt: tokio::runtime::Runtime,
    /// (handle, UDP address, DHT public key) per node.
    pub nodes: Vec<(
        ferry_net::NodeHandle,
        std::net::SocketAddr,
        ferry_crypto::PublicKey,
    )>,
}

impl std::fmt::Debug for Infra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infra")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl Infra {
    /// Starts `n` ≥ 1 nodes.
    ///
    /// # Errors
    /// Runtime, socket or spawn failures.
    pub fn new(n: usize) -> anyhow::Result<Self> {
        Self::new_on(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), n)
    }

    /// Like [`Self::new`], the nodes bound to `ip` (e.g. a namespace's address, so that
    /// processes in other namespaces can bootstrap from them).
    ///
    /// # Errors
    /// Runtime, socket or spawn failures.
    pub fn new_on(ip: std::net::IpAddr, n: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 1, "an infrastructure needs a node");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let nodes = rt.block_on(async {
            let mut nodes = Vec::new();
            for _ in 0..n {
                let socket = ferry_net::bind_udp(ip, ferry_net::PortSpec::Exact(0))?;
                let options = ferry_net::NodeOptions {
                    dht: ferry_proto::dht::DhtConfig {
                        lan_discovery: false,
                        ..ferry_proto::dht::DhtConfig::default()
                    },
                    ..ferry_net::NodeOptions::default()
                };
                let (h, _join) =
                    ferry_net::spawn_node(socket, options, ferry_net::DhtEvents(None))?;
                let s = h.status().await?;
                nodes.push((h, s.local_addr, s.dht_public_key));
            }
            let (addr, pk) = (nodes[0].1, nodes[0].2);
            for (h, _, _) in &nodes[1..] {
                h.bootstrap(addr, pk).await?;
            }
            anyhow::Ok(nodes)
        })?;
        Ok(Self { rt, nodes })
    }

    /// The runtime the nodes run on (to drive their handles from a test).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// `--bootstrap IP:PORT:KEY` arguments for `ferry up` (node 0).
    pub fn ferry_args(&self) -> Vec<String> {
        vec![
            "--bootstrap".into(),
            format!("{}:{}", self.nodes[0].1, self.nodes[0].2.to_hex()),
        ]
    }

    /// Bootstrap triples for [`ToxClientOptions::bootstrap`] (nodes 0 and 1).
    pub fn tox_bootstrap(&self) -> Vec<(String, u16, String)> {
        self.nodes
            .iter()
            .take(2)
            .map(|(_, a, k)| (a.ip().to_string(), a.port(), k.to_hex()))
            .collect()
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        self.rt.block_on(async {
            for (h, _, _) in nodes {
                h.shutdown().await;
            }
        });
    }
}
