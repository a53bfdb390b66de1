//! `ferry devnet --netns` (issue 7 item 8): a client, an exit and a server in three network
//! namespaces, a ping and a download from the server through the exit, then everything torn down.
//!
//! Topology (private ranges only; names carry this process id so runs do not collide):
//!
//! ```text
//!   client ns  fdn<pid>-c   veth 10.99.1.1/24 ── 10.99.1.2/24  exit ns  fdn<pid>-e
//!   exit ns    fdn<pid>-e   veth 10.99.2.1/24 ── 10.99.2.2/24  server ns fdn<pid>-s
//! ```
//!
//! The exit namespace runs [`DHT_NODES`] DHT-only ferry nodes (so the client finds the exit
//! through the onion as on the real network) and `ferry up --exit-node --uplink <exit–server
//! veth>`; the client namespace runs `ferry up`, befriends the exit by its public key (a
//! service node) and brings up `tunnel up --exit KEY --route 10.99.2.0/24`. The client has no
//! other route to the server, so the ping and the download can only go through the exit (whose
//! NAT makes the server see the uplink address). The server namespace runs this binary's hidden
//! `devnet-serve` (a TCP loop sending a fixed byte pattern); the client runs `devnet-fetch`,
//! which checks every byte.
//!
//! Every `ferry up` runs with `--no-default-bootstrap --no-lan --no-bootstrap-relays` and binds
//! inside its namespace: nothing is sent outside the namespaces made here. Children are
//! stopped by PID (SIGTERM, then SIGKILL) and the namespaces deleted when the run ends, fails,
//! or is interrupted (Ctrl-C, SIGTERM). With `FERRY_DEVNET_DIAG=1` set, a failed ping prints the
//! namespaces' addresses, routes, iptables counters and conntrack table to stderr.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_api::{AddFriend, Client, Friend, Status, TunnelStatus, TunnelUp};
use serde::Serialize;

/// DHT-only nodes in the exit namespace.
const DHT_NODES: u16 = 3;
/// First UDP port of the DHT nodes (then +1 each); the exit and the client use 33445.
const DHT_PORT: u16 = 33446;
/// Budget for the client and the exit to see each other online.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(45);
/// The TCP port `devnet-serve` listens on in the server namespace.
const SERVE_PORT: u16 = 8080;
const CLIENT_IP: &str = "10.99.1.1";
const EXIT_IP: &str = "10.99.1.2";
const UPLINK_IP: &str = "10.99.2.1";
const SERVER_IP: &str = "10.99.2.2";
const SERVER_CIDR: &str = "10.99.2.0/24";

/// Options of `ferry devnet --netns`.
#[derive(Debug, Clone)]
pub(crate) struct NetnsOptions {
    /// Download size, MiB (1..=4096).
    pub download_mib: u32,
    /// Print the report as JSON on stdout (progress goes to stderr).
    pub json: bool,
}

/// What `ferry devnet --netns --json` prints.
#[derive(Debug, Serialize)]
pub(crate) struct NetnsReport {
    /// Namespaces used (client, exit, server); deleted when the run ends.
    pub namespaces: [String; 3],
    /// The exit's long-term public key (hex).
    pub exit_public_key: String,
    /// The client's long-term public key (hex).
    pub client_public_key: String,
    /// Seconds from `friend add` until both were online.
    pub online_after_s: f64,
    /// The client's path to the exit (`udp`/`tcp`).
    pub connection: String,
    /// The IPv4 address the exit handed the client (from 100.64.0.0/10).
    pub client_address_v4: Option<String>,
    /// The server's address (reached through the exit).
    pub server: String,
    /// The ping through the exit.
    pub ping: PingReport,
    /// The download through the exit.
    pub download: DownloadReport,
}

/// The ping part of [`NetnsReport`].
#[derive(Debug, Serialize, Default)]
pub(crate) struct PingReport {
    /// Echo requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Mean round-trip time, ms.
    pub rtt_ms_avg: Option<f64>,
}

/// The download part of [`NetnsReport`] (also `devnet-fetch`'s JSON line).
#[derive(Debug, Serialize, serde::Deserialize, Default)]
pub(crate) struct DownloadReport {
    /// Bytes asked for.
    pub expected_bytes: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Seconds from connect to the last byte.
    pub seconds: f64,
    /// Rate, Mbit/s (10^6 bit/s).
    pub mbit_s: f64,
    /// Every byte arrived and matched the pattern.
    pub ok: bool,
}

/// Whether this process runs as root (uid 0, from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd`; an error with its stderr when it fails.
fn run(cmd: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("running {}", cmd[0]))?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Everything this run made: stopped and deleted on drop (also when the run future is dropped
/// by Ctrl-C).
#[derive(Debug)]
struct Lab {
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// Profiles and logs (removed on drop).
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SIGTERM first: the exit removes its iptables chains on a clean shutdown.
        for c in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth pair `a_dev` (in `a`, `a_ip`/24) ↔ `b_dev` (in `b`, `b_ip`/24), both up.
    fn link(
        &self,
        a: &str,
        a_dev: &str,
        a_ip: &str,
        b: &str,
        b_dev: &str,
        b_ip: &str,
    ) -> anyhow::Result<()> {
        run(&[
            "ip", "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev, "netns",
            b,
        ])?;
        run(&[
            "ip",
            "-n",
            a,
            "addr",
            "add",
            &format!("{a_ip}/24"),
            "dev",
            a_dev,
        ])?;
        run(&[
            "ip",
            "-n",
            b,
            "addr",
            "add",
            &format!("{b_ip}/24"),
            "dev",
            b_dev,
        ])?;
        run(&["ip", "-n", a, "link", "set", a_dev, "up"])?;
        run(&["ip", "-n", b, "link", "set", b_dev, "up"])?;
        Ok(())
    }

    /// Spawns `ip netns exec NS <this binary> ARGS` (`ip netns exec` execs it: the PID is ours
    /// to stop).
    fn spawn(&mut self, ns: &str, args: &[String], log: &Path) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("locating the ferry binary")?;
        let log = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning ip netns exec")?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }
}

/// A ferry node of this run: its profile and API client.
struct Node {
    api: Client,
}

impl Node {
    /// `ferry init` a fresh profile under `dir/name`, `ferry up` it in `ns` on UDP `port` with
    /// `extra` arguments, and wait (≤ 20 s) for its API.
    async fn start(
        lab: &mut Lab,
        dir: &Path,
        name: &str,
        ns: &str,
        port: u16,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let profile = dir.join(name);
        std::fs::create_dir_all(&profile)?;
        ferry_daemon::profile::init(&profile, false)?;
        let mut args: Vec<String> = vec![
            "--profile".into(),
            profile.to_string_lossy().into_owned(),
            "up".into(),
            "--udp-port".into(),
            port.to_string(),
            "--bind".into(),
            "0.0.0.0".into(),
            "--no-default-bootstrap".into(),
            "--no-lan".into(),
            "--no-bootstrap-relays".into(),
        ];
        args.extend_from_slice(extra);
        lab.spawn(ns, &args, &dir.join(format!("{name}.log")))?;
        let api = Client::new(ferry_api::socket_path(&profile));
        let start = Instant::now();
        while api.get::<Status>("/v1/status").await.is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "ferry up ({name}, namespace {ns}) did not answer in 20 s; log: {}",
                dir.join(format!("{name}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { api })
    }

    async fn status(&self) -> anyhow::Result<Status> {
        Ok(self.api.get("/v1/status").await?)
    }

    /// The `connection` of friend `pk` ("none" if not a friend yet).
    async fn connection(&self, pk: &str) -> String {
        self.api
            .get::<Vec<Friend>>("/v1/friends")
            .await
            .ok()
            .and_then(|l| l.into_iter().find(|f| f.public_key == pk))
            .map_or_else(|| "none".to_string(), |f| f.connection)
    }
}

fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Runs `demo` to its end or until Ctrl-C / SIGTERM ("interrupted" / "terminated" errors);
/// either way the future is dropped before this returns, so what it owns is cleaned up.
pub(crate) async fn until_signal<T>(
    demo: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut demo = Box::pin(demo);
    #[cfg(unix)]
    let result = tokio::select! {
        r = &mut demo => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    #[cfg(not(unix))]
    let result = tokio::select! {
        r = &mut demo => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(demo);
    result
}

/// Runs the whole demo; tears everything down before returning (or on Ctrl-C/SIGTERM).
pub(crate) async fn run_netns(opts: NetnsOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "ferry devnet --netns needs root (it creates network namespaces, TUN devices and \
         iptables rules): run it with sudo"
    );
    anyhow::ensure!(
        (1..=4096).contains(&opts.download_mib),
        "--download-mib must be in 1..=4096"
    );
    for tool in ["ip", "iptables", "ping"] {
        anyhow::ensure!(
            have(tool),
            "ferry devnet --netns needs `{tool}` (not found)"
        );
    }
    anyhow::ensure!(
        Path::new("/dev/net/tun").exists(),
        "ferry devnet --netns needs /dev/net/tun"
    );
    // Dropping the demo future drops its Lab: children stopped, namespaces deleted.
    let report = until_signal(demo(&opts)).await?;
    say(opts.json, "torn down: daemons stopped, namespaces deleted");
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    anyhow::ensure!(
        report.ping.received > 0 && report.download.ok,
        "the ping or the download through the exit failed"
    );
    Ok(())
}

async fn demo(opts: &NetnsOptions) -> anyhow::Result<NetnsReport> {
    let json = opts.json;
    let tag = format!("fdn{:x}", std::process::id());
    let (ns_c, ns_e, ns_s) = (format!("{tag}-c"), format!("{tag}-e"), format!("{tag}-s"));
    let dir = std::env::temp_dir().join(format!("ferry-devnet-{tag}"));
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
        dir: dir.clone(),
    };
    std::fs::create_dir_all(&dir)?;
    for ns in [&ns_c, &ns_e, &ns_s] {
        lab.add_ns(ns)?;
    }
    // veth names ≤ 15 bytes: "<tag>ce" etc.
    let uplink = format!("{tag}es");
    lab.link(
        &ns_c,
        &format!("{tag}ce"),
        CLIENT_IP,
        &ns_e,
        &format!("{tag}ec"),
        EXIT_IP,
    )?;
    lab.link(
        &ns_e,
        &uplink,
        UPLINK_IP,
        &ns_s,
        &format!("{tag}se"),
        SERVER_IP,
    )?;
    say(
        json,
        &format!(
            "namespaces: {ns_c} (client {CLIENT_IP}) ── {ns_e} (exit {EXIT_IP}, uplink {uplink} \
             {UPLINK_IP}) ── {ns_s} (server {SERVER_IP})"
        ),
    );

    // The server: this binary's devnet-serve loop.
    lab.spawn(
        &ns_s,
        &[
            "devnet-serve".into(),
            "--listen".into(),
            format!("{SERVER_IP}:{SERVE_PORT}"),
        ],
        &dir.join("serve.log"),
    )?;

    // The ferry network: DHT nodes and the exit in the exit namespace, the client.
    let mut boot: Vec<String> = Vec::new();
    for i in 0..DHT_NODES {
        let port = DHT_PORT + i;
        let node = Node::start(&mut lab, &dir, &format!("dht{i}"), &ns_e, port, &boot).await?;
        let key = node.status().await?.dht_public_key;
        boot.extend(["--bootstrap".into(), format!("{EXIT_IP}:{port}:{key}")]);
    }
    let mut exit_args = boot.clone();
    exit_args.extend(["--exit-node".into(), "--uplink".into(), uplink.clone()]);
    let exit = Node::start(&mut lab, &dir, "exit", &ns_e, 33445, &exit_args).await?;
    let client = Node::start(&mut lab, &dir, "client", &ns_c, 33445, &boot).await?;
    let exit_pk = exit.status().await?.public_key;
    let client_pk = client.status().await?.public_key;
    say(
        json,
        &format!("started {DHT_NODES} DHT nodes, exit {exit_pk}, client {client_pk}"),
    );

    // Befriend the exit (a service node: its public key is enough) and wait for both sides.
    let start = Instant::now();
    let _: Friend = client
        .api
        .post(
            "/v1/friends/add",
            &AddFriend {
                tox_id: exit_pk.clone(),
                message: "ferry devnet --netns".into(),
            },
        )
        .await?;
    let connection = loop {
        let c = client.connection(&exit_pk).await;
        if c != "none" && exit.connection(&client_pk).await != "none" {
            break c;
        }
        anyhow::ensure!(
            start.elapsed() < ONLINE_TIMEOUT,
            "client and exit not online after {ONLINE_TIMEOUT:?} (logs in {})",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let online_after = start.elapsed();
    say(
        json,
        &format!(
            "client and exit online after {:.1} s ({connection})",
            online_after.as_secs_f64()
        ),
    );

    let up = TunnelUp {
        device: Some("ferry0".into()),
        exit: Some(exit_pk.clone()),
        routes: vec![SERVER_CIDR.into()],
        ..TunnelUp::default()
    };
    let t: TunnelStatus = client
        .api
        .post("/v1/tunnel/up", &up)
        .await
        .context("tunnel up --exit")?;
    say(
        json,
        &format!(
            "tunnel up on {}: client address {} (IPv4 from the exit), route {SERVER_CIDR} via the exit",
            t.device,
            t.client_address_v4.as_deref().unwrap_or("-")
        ),
    );

    let ping = ping_through(&ns_c).await;
    say(
        json,
        &format!(
            "ping {SERVER_IP} through the exit: {}/{} replies, rtt avg {}",
            ping.received,
            ping.sent,
            ping.rtt_ms_avg
                .map_or_else(|| "-".to_string(), |r| format!("{r:.2} ms"))
        ),
    );

    if ping.received == 0 && std::env::var_os("FERRY_DEVNET_DIAG").is_some() {
        for (ns, cmd) in [
            (
                &ns_e,
                "ip addr; ip route; ip rule; sysctl net.ipv4.ip_forward net.ipv4.conf.all.rp_filter; iptables-save -c; cat /proc/net/nf_conntrack 2>/dev/null | head",
            ),
            (&ns_s, "ip -s link; ip route"),
            (&ns_c, "ip addr; ip route; ip rule"),
        ] {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "sh", "-c", cmd])
                .output();
            if let Ok(o) = out {
                eprintln!(
                    "== {ns}\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        if let Ok(log) = std::fs::read_to_string(dir.join("exit.log")) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("== exit log (last 40 lines)");
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
    // Tunnel counters of both ends (what to look at when the ping failed).
    if let (Ok(c), Ok(e)) = (
        client.api.get::<TunnelStatus>("/v1/tunnel/status").await,
        exit.api.get::<TunnelStatus>("/v1/tunnel/status").await,
    ) {
        let x = e.exit_counters.unwrap_or_default();
        say(
            json,
            &format!(
                "tunnel counters: client sent {} / received {} packets (dropped {}); exit: sent {} \
                 / received {} (dropped {}), {} client(s), forwarded {}, returned {}, dropped \
                 no_client {} no_route {} bad_source {} policy {} malformed {}",
                c.tx_packets,
                c.rx_packets,
                c.dropped,
                e.tx_packets,
                e.rx_packets,
                e.dropped,
                e.exit_clients,
                x.forwarded,
                x.returned,
                x.no_client,
                x.no_route,
                x.bad_source,
                x.policy,
                x.malformed
            ),
        );
    }

    let download = fetch_through(&ns_c, opts.download_mib, &dir).await?;
    say(
        json,
        &format!(
            "download {} MiB from {SERVER_IP}:{SERVE_PORT} through the exit: {} bytes in {:.2} s, \
             {:.0} Mbit/s, {}",
            opts.download_mib,
            download.bytes,
            download.seconds,
            download.mbit_s,
            if download.ok { "content ok" } else { "FAILED" }
        ),
    );
    Ok(NetnsReport {
        namespaces: [ns_c, ns_e, ns_s],
        exit_public_key: exit_pk,
        client_public_key: client_pk,
        online_after_s: online_after.as_secs_f64(),
        connection,
        client_address_v4: t.client_address_v4,
        server: SERVER_IP.into(),
        ping,
        download,
    })
}

/// Pings the server from the client namespace: retries for ≤ 10 s until a reply (routes and
/// the exit's address assignment settle), then 5 pings.
async fn ping_through(ns: &str) -> PingReport {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || ping_blocking(&ns))
        .await
        .unwrap_or_default()
}

fn ping_blocking(ns: &str) -> PingReport {
    let start = Instant::now();
    loop {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", SERVER_IP,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", SERVER_IP,
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    PingReport {
        sent: 5,
        received: u32::try_from(rtts.len()).unwrap_or(u32::MAX),
        rtt_ms_avg: (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64),
    }
}

/// Runs `devnet-fetch` in the client namespace (killed by PID past 120 s) and reads its JSON
/// line.
async fn fetch_through(ns: &str, mib: u32, dir: &Path) -> anyhow::Result<DownloadReport> {
    let exe = std::env::current_exe().context("locating the ferry binary")?;
    let out_path = dir.join("fetch.json");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "devnet-fetch",
            "--from",
            &format!("{SERVER_IP}:{SERVE_PORT}"),
            "--mib",
            &mib.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(dir.join("fetch.log"))?)
        .spawn()?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the download did not finish in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::fs::read_to_string(&out_path)?;
    serde_json::from_str(out.trim()).with_context(|| format!("devnet-fetch printed {out:?}"))
}

/// Byte `i` of the download pattern (an xorshift of the 8-byte block index; both ends compute
/// it, so every byte is checked).
fn pattern_block(index: u64) -> [u8; 8] {
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD6E8_FEB8_6659_FD93;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x.to_le_bytes()
}

/// Fills `buf` with the pattern starting at byte offset `offset` (a multiple of 8).
fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (k, chunk) in buf.chunks_mut(8).enumerate() {
        let b = pattern_block(offset / 8 + k as u64);
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// `ferry devnet-serve --listen ADDR` (hidden): a TCP loop; each connection sends a decimal
/// MiB count and a newline, and gets that many MiB of the pattern, then EOF.
pub(crate) fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let mut req = [0u8; 16];
            let mut n = 0;
            while n < req.len() {
                match s.read(&mut req[n..]) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
                if req[..n].contains(&b'\n') {
                    break;
                }
            }
            let mib: u64 = String::from_utf8_lossy(&req[..n])
                .trim()
                .parse()
                .unwrap_or(0)
                .min(4096);
            let mut buf = vec![0u8; 1 << 20];
            for m in 0..mib {
                fill_pattern(&mut buf, m << 20);
                if s.write_all(&buf).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// `ferry devnet-fetch --from ADDR --mib N` (hidden): downloads N MiB from `devnet-serve`,
/// checks every byte, prints one [`DownloadReport`] JSON line.
pub(crate) fn fetch(from: SocketAddr, mib: u32) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&from, Duration::from_secs(5))
        .with_context(|| format!("connecting to {from}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{mib}\n").as_bytes())?;
    let expected = u64::from(mib) << 20;
    let mut buf = vec![0u8; 1 << 16];
    let mut want = vec![0u8; 1 << 16];
    let (mut got, mut ok) = (0u64, true);
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!("devnet-fetch: {e}");
                ok = false;
                break;
            }
        };
        // Compare against the pattern at this offset (aligned to the 8-byte block).
        let base = got & !7;
        let skip = usize::try_from(got - base).unwrap_or(0);
        let len = skip + n;
        if want.len() < len + 8 {
            want.resize(len + 8, 0);
        }
        fill_pattern(&mut want[..len], base);
        if buf[..n] != want[skip..len] {
            ok = false;
        }
        got += n as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = DownloadReport {
        expected_bytes: expected,
        bytes: got,
        seconds,
        mbit_s: got as f64 * 8.0 / 1e6 / seconds.max(1e-9),
        ok: ok && got == expected,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_offset_consistent() {
        let mut whole = vec![0u8; 4096];
        fill_pattern(&mut whole, 1 << 20);
        let mut part = vec![0u8; 1000];
        fill_pattern(&mut part, (1 << 20) + 64);
        assert_eq!(&whole[64..1064], &part[..]);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
