//! Paid forwarding end to end in network namespaces (issue 8): a client pays an exit for the
//! traffic it carries, both settling on one shared ledger, `ferry chain serve` in the public
//! namespace; and (second test, `a_client_pays_a_relay_that_pays_the_exit_in_namespaces`) a
//! client pays a circuit relay, which pays the exit, for the cells each carries.
//!
//! Topology: `lab/nat.sh up none:none` (public segment `NS_BOOT` with 4 ferry DHT nodes, the
//! first a TCP relay, and the chain endpoint on `BOOT_IP:8545`; host A = client, host B = exit,
//! behind plain routers) plus a server namespace `PREFIX-srv` joined to the exit by a veth pair
//! (exit `up0` 10.77.2.1/24, server `eth0` 10.77.2.2/24). The exit runs `ferry up --exit-node
//! --market --market-backend json-rpc ...` at `PRICE` wei/KiB; the client `ferry up --market
//! ...` and `ferry tunnel up --exit KEY --route 10.77.2.0/24`; both accounts are funded with
//! `ferry chain fund`. The client uploads `UP_MIB` MiB twice and downloads `DOWN_MIB` MiB over
//! TCP.
//!
//! Asserts: the exit's and the client's meters agree; the exit's earnings equal
//! `due(metered bytes)` and the client's channel cumulative to within one voucher interval
//! (64 KiB × price); the metered bytes cover the upload (IP bytes ≥ payload); after `ferry stop`
//! the exit has claimed on the chain exactly what it had been paid (`ferry chain channel`), and
//! its chain balance grew by that minus gas. Both directions are metered and paid: the download
//! costs its bytes (the replies the exit sends back, which the client counts itself) plus its
//! ACKs; that is asserted too.
//!
//! Needs root, iproute2, iptables, python3 and `/dev/net/tun`; skipped with a message otherwise.
//! Namespaces are deleted and processes killed by PID on drop.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::KillOnDrop;
use ferry_testkit::lab::{NatLab, NetnsFerry, lab_skip_reason};
use serde_json::Value;

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const PUBLIC_NODES: u16 = 4;
const ONLINE_TIMEOUT: Duration = Duration::from_secs(90);
const EXIT_PORT: u16 = 33445;
const SERVER_V4: &str = "10.77.2.2";
const UPLINK_V4: &str = "10.77.2.1";
/// Wei per KiB the exit asks.
const PRICE: u128 = 100_000_000_000;
/// The daemon's voucher interval (`ferry_daemon::market::VOUCHER_KIB`), KiB.
const VOUCHER_KIB: u64 = 512;
const UP_MIB: u64 = 16;
const DOWN_MIB: u64 = 16;
const CHAIN_PORT: u16 = 8545;

const POLICY: &str = r#"
[[allow]]
cidr = "10.77.2.0/24"
protocol = "tcp"
ports = "8080"
"#;

/// TCP 8080: "down N\n" → N MiB; "up N\n" + N MiB → "got BYTES".
const SERVER_PY: &str = r#"
import socket, threading
def serve(c):
    try:
        f = c.makefile("rb")
        cmd, n = f.readline().split()
        n = int(n) << 20
        if cmd == b"down":
            block = bytes(range(256)) * 4096
            while n > 0:
                k = min(n, len(block)); c.sendall(block[:k]); n -= k
        else:
            got = 0
            while got < n:
                d = f.read(min(65536, n - got))
                if not d: break
                got += len(d)
            c.sendall(b"got %d" % got)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(16)
print("ready", flush=True)
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// `client.py up|down HOST MIB`: prints "OK BYTES SECS".
const CLIENT_PY: &str = r#"
import socket, sys, time
mode, host, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.time()
s = socket.create_connection((host, 8080), timeout=60)
s.sendall(b"%s %d\n" % (mode.encode(), mib))
if mode == "down":
    got = 0
    while True:
        d = s.recv(1 << 16)
        if not d: break
        got += len(d)
else:
    block = b"\x5a" * (1 << 20)
    for _ in range(mib): s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    r = b""
    while True:
        d = s.recv(100)
        if not d: break
        r += d
    got = int(r.split()[1])
print("OK", got, "%.3f" % (time.time() - t))
"#;

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs")
}

fn ok(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The server namespace, deleted (processes killed by PID first) on drop.
struct ServerNs(String);

impl Drop for ServerNs {
    fn drop(&mut self) {
        let pids = sh(&["ip", "netns", "pids", &self.0]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// `ferry ARGS` run inside `ns` (the chain endpoint is only reachable from the namespaces);
/// stdout parsed as JSON.
fn ferry_json_in(ns: &str, args: &[&str]) -> Value {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(ferry())
        .args(args)
        .output()
        .expect("ferry");
    assert!(
        o.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("json")
}

fn wei(v: &Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not wei: {v}"))
}

fn used(up: &NetnsFerry, role: &str) -> u64 {
    up.json(&["contracts", "--json"])
        .expect("contracts")
        .as_array()
        .expect("array")
        .iter()
        .filter(|k| k["role"] == role)
        .map(|k| k["data_used_bytes"].as_u64().unwrap_or(0))
        .sum()
}

fn due(bytes: u64) -> u128 {
    (u128::from(bytes) * PRICE).div_ceil(1024)
}

/// Fields drop in order: processes first, then namespaces, then files.
struct Lab {
    _chain: KillOnDrop,
    _server: KillOnDrop,
    _public: Vec<NetnsFerry>,
    _srv: ServerNs,
    lab: NatLab,
    dir: tempfile::TempDir,
    peer_boot: Vec<String>,
    relay: Vec<String>,
    rpc_url: String,
    chain_id: u64,
}

impl Lab {
    fn up(prefix: &str) -> Self {
        let lab = NatLab::up("none:none", prefix).expect("lab");
        let exit_ns = lab.var("NS_B").to_string();
        let srv = ServerNs(format!("{prefix}-srv"));
        ok(&["ip", "netns", "add", &srv.0]);
        ok(&[
            "ip", "-n", &exit_ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", &srv.0,
        ]);
        for (ns, dev, v4) in [
            (exit_ns.as_str(), "up0", UPLINK_V4),
            (srv.0.as_str(), "eth0", SERVER_V4),
        ] {
            ok(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]);
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("policy");
        std::fs::write(dir.path().join("server.py"), SERVER_PY).expect("server.py");
        std::fs::write(dir.path().join("client.py"), CLIENT_PY).expect("client.py");
        let mut server = KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", &srv.0, "python3", "-u"])
                .arg(dir.path().join("server.py"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("server"),
        );
        let mut line = String::new();
        std::io::BufReader::new(server.0.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server ready");
        assert_eq!(line.trim(), "ready");

        // The shared ledger on the public segment.
        let boot_ns = lab.var("NS_BOOT").to_string();
        let boot_ip = lab.var("BOOT_IP").to_string();
        let listen = format!("{boot_ip}:{CHAIN_PORT}");
        let mut chain = KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", &boot_ns])
                .arg(ferry())
                .args(["chain", "serve", "--listen", &listen, "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("ferry chain serve"),
        );
        let mut line = String::new();
        std::io::BufReader::new(chain.0.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("chain ready");
        let info: Value = serde_json::from_str(&line).expect("chain json");
        let rpc_url = info["url"].as_str().expect("url").to_string();
        let chain_id = info["chain_id"].as_u64().expect("chain id");

        // The ferry network.
        let relay_port = 33500u16;
        let first = NetnsFerry::start(
            ferry(),
            &boot_ns,
            33445,
            &[],
            &["--tcp-relay".to_string(), relay_port.to_string()],
        )
        .expect("first public node");
        let first_key = first.dht_key();
        let boot = vec![format!("{boot_ip}:33445:{first_key}")];
        let mut public = vec![first];
        for i in 1..PUBLIC_NODES {
            public
                .push(NetnsFerry::start(ferry(), &boot_ns, 33445 + i, &boot, &[]).expect("public"));
        }
        let mut peer_boot = boot.clone();
        for (i, d) in public.iter().enumerate().skip(1) {
            peer_boot.push(format!("{boot_ip}:{}:{}", 33445 + i as u16, d.dht_key()));
        }
        let relay = vec![
            "--relay-peer".to_string(),
            format!("{boot_ip}:{relay_port}:{first_key}"),
        ];
        Self {
            _chain: chain,
            _server: server,
            _public: public,
            _srv: srv,
            lab,
            dir,
            peer_boot,
            relay,
            rpc_url,
            chain_id,
        }
    }

    fn market_args(&self) -> Vec<String> {
        let mut a = self.relay.clone();
        a.extend(
            [
                "--market",
                "--market-backend",
                "json-rpc",
                "--rpc-url",
                &self.rpc_url,
                "--chain-id",
                &self.chain_id.to_string(),
            ]
            .map(String::from),
        );
        a
    }

    fn client_py(&self) -> String {
        self.dir
            .path()
            .join("client.py")
            .to_string_lossy()
            .into_owned()
    }

    fn fund(&self, up: &NetnsFerry) -> String {
        let w = up.json(&["wallet", "--json"]).expect("wallet");
        let addr = w["address"].as_str().expect("address").to_string();
        ferry_json_in(
            self.lab.var("NS_BOOT"),
            &[
                "chain",
                "fund",
                &addr,
                "1000000000000000000",
                "--rpc-url",
                &self.rpc_url,
                "--json",
            ],
        );
        addr
    }

    fn chain(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--rpc-url", &self.rpc_url, "--json"]);
        ferry_json_in(self.lab.var("NS_BOOT"), &a)
    }
}

#[test]
fn a_client_pays_an_exit_on_a_shared_chain_in_namespaces() {
    let why = lab_skip_reason(&["python3"])
        .or_else(|| (!Path::new("/dev/net/tun").exists()).then(|| "no /dev/net/tun".to_string()));
    if let Some(why) = why {
        eprintln!("SKIP a_client_pays_an_exit_on_a_shared_chain_in_namespaces: {why}");
        return;
    }
    let t0 = Instant::now();
    let prefix = format!("mk{:x}", std::process::id() & 0xffff);
    let l = Lab::up(&prefix);
    let (client_ns, exit_ns) = (l.lab.var("NS_A").to_string(), l.lab.var("NS_B").to_string());

    let mut exit_args = l.market_args();
    exit_args.extend(
        [
            "--exit-node",
            "--uplink",
            "up0",
            "--exit-policy",
            &l.dir.path().join("policy.toml").to_string_lossy(),
            "--price-per-kib",
            &PRICE.to_string(),
        ]
        .map(String::from),
    );
    let exit =
        NetnsFerry::start(ferry(), &exit_ns, EXIT_PORT, &l.peer_boot, &exit_args).expect("exit");
    let mut client_args = l.market_args();
    client_args.extend(["--max-price-per-kib".to_string(), (2 * PRICE).to_string()]);
    let client =
        NetnsFerry::start(ferry(), &client_ns, 33445, &l.peer_boot, &client_args).expect("client");
    let exit_addr = l.fund(&exit);
    let client_addr = l.fund(&client);
    let exit_balance0 = wei(&l.chain(&["chain", "balance", &exit_addr])["balance"]);

    let (client_pk, exit_pk) = (client.id("public_key"), exit.id("public_key"));
    assert!(
        client
            .cli(&["friend", "add", &exit_pk, "exit please"])
            .is_some_and(|o| o.status.success())
    );
    let start = Instant::now();
    while !(client.online(&exit_pk) && exit.online(&client_pk)) {
        assert!(start.elapsed() < ONLINE_TIMEOUT, "friends not online");
        std::thread::sleep(Duration::from_millis(200));
    }
    let up = client
        .cli(&[
            "tunnel",
            "up",
            "--exit",
            &exit_pk,
            "--route",
            "10.77.2.0/24",
        ])
        .expect("tunnel up");
    assert!(
        up.status.success(),
        "tunnel up: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    // Traffic: an upload and a download, both metered and paid.
    let py = l.client_py();
    let run = |mode: &str, mib: u64| -> f64 {
        let start = Instant::now();
        let r = loop {
            let r = in_ns(
                &client_ns,
                &["python3", &py, mode, SERVER_V4, &mib.to_string()],
            );
            if r.0 || start.elapsed() > Duration::from_secs(30) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let w: Vec<&str> = r.1.split_whitespace().collect();
        assert!(r.0 && w.first() == Some(&"OK"), "{mode}: {}", r.1);
        assert_eq!(w.get(1), Some(&(mib << 20).to_string().as_str()), "{}", r.1);
        w.get(2).and_then(|x| x.parse().ok()).unwrap_or(0.0)
    };
    // Twice: the first upload also opens the channel (traffic on the unsecured allowance
    // until the server has checked it on the chain).
    let up1_s = run("up", UP_MIB);
    let up2_s = run("up", UP_MIB);
    let before_down = used(&exit, "server");
    let down_s = run("down", DOWN_MIB);
    eprintln!(
        "MEASURE paid exit: up {UP_MIB} MiB in {up1_s:.2} s then {up2_s:.2} s, down {DOWN_MIB} \
         MiB in {down_s:.2} s (debug build)"
    );

    // Let receipts and vouchers settle.
    let start = Instant::now();
    let (metered, earned, cumulative) = loop {
        std::thread::sleep(Duration::from_secs(2));
        let metered = used(&exit, "server");
        let earned = wei(&exit.json(&["earnings", "--json"]).expect("earnings")["total"]);
        let w = client.json(&["wallet", "--json"]).expect("wallet");
        let cumulative = w["channels"]
            .as_array()
            .and_then(|c| c.first())
            .map_or(0, |c| wei(&c["cumulative"]));
        let settled =
            cumulative == earned && due(metered).abs_diff(earned) <= due(VOUCHER_KIB * 1024);
        if settled || start.elapsed() > Duration::from_secs(30) {
            break (metered, earned, cumulative);
        }
    };
    let client_metered = used(&client, "client");
    eprintln!(
        "MEASURE paid exit: metered exit {metered} B, client {client_metered} B, due {} wei, \
         paid {earned} wei, client cumulative {cumulative} wei",
        due(metered)
    );
    // The client counts what it hands to the link and what it receives; the exit what it
    // forwards either way. They differ by the packets lost on the way or gated by the exit.
    assert!(
        metered.abs_diff(client_metered) <= client_metered / 20,
        "exit metered {metered} B, client {client_metered} B"
    );
    let payload = (2 * UP_MIB) << 20;
    // IP and TCP headers both ways (the ACKs come back metered too): under 15 %.
    assert!(
        before_down >= payload && before_down <= payload + payload * 15 / 100,
        "upload metered {before_down} B for {payload} B of payload"
    );
    let down = metered - before_down;
    let down_payload = DOWN_MIB << 20;
    assert!(
        down >= down_payload && down <= down_payload + down_payload / 5,
        "the download metered {down} B for {down_payload} B of payload (replies and ACKs)"
    );
    assert_eq!(
        cumulative, earned,
        "the client's vouchers are the exit's earnings"
    );
    // Within one voucher interval either way: the meters are read while the connections'
    // last packets may still be on the way.
    assert!(
        due(metered).abs_diff(earned) <= due(VOUCHER_KIB * 1024),
        "paid {earned}, due {} (one voucher interval = {} wei)",
        due(metered),
        due(VOUCHER_KIB * 1024)
    );
    let w = client.json(&["wallet", "--json"]).expect("wallet");
    let ch = w["channels"][0].clone();
    assert_eq!(ch["peer"], exit_pk.as_str());
    let channel_id = ch["channel_id"].as_str().expect("id").to_string();
    let on_chain = l.chain(&["chain", "channel", &channel_id]);
    assert_eq!(
        on_chain["sender"].as_str().map(str::to_lowercase),
        Some(client_addr.to_lowercase())
    );
    assert_eq!(
        on_chain["receiver"].as_str().map(str::to_lowercase),
        Some(exit_addr.to_lowercase())
    );
    assert_eq!(on_chain["deposit"], ch["deposit"]);
    assert_eq!(
        w["balance"],
        l.chain(&["chain", "balance", &client_addr])["balance"],
        "client wallet = chain"
    );

    // The exit claims its newest voucher on shutdown; the chain shows it.
    assert!(exit.cli(&["stop"]).is_some_and(|o| o.status.success()));
    let start = Instant::now();
    let claimed = loop {
        let c = wei(&l.chain(&["chain", "channel", &channel_id])["claimed"]);
        if c == earned || start.elapsed() > Duration::from_secs(20) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(claimed, earned, "claimed on the chain = earnings");
    let exit_balance1 = wei(&l.chain(&["chain", "balance", &exit_addr])["balance"]);
    assert!(
        exit_balance1 > exit_balance0 && exit_balance1 <= exit_balance0 + earned,
        "exit balance {exit_balance0} → {exit_balance1} (+{earned} minus gas)"
    );
    let w = client.json(&["wallet", "--json"]).expect("wallet");
    assert_eq!(
        wei(&w["channels"][0]["claimed"]),
        earned,
        "client sees the claim"
    );
    eprintln!("market_netns took {:?}", t0.elapsed());
}

/// Wei per KiB the relay asks (it pays the exit [`PRICE`] for the same cells).
const RELAY_PRICE: u128 = 2 * PRICE;
/// MiB uploaded through the circuit once the channels are open.
const CIRCUIT_UP_MIB: u64 = 4;
/// MiB downloaded through the circuit once the channels are open.
const CIRCUIT_DOWN_MIB: u64 = 16;

fn due_at(bytes: u64, price: u128) -> u128 {
    (u128::from(bytes) * price).div_ceil(1024)
}

/// The wallet row of `up`'s channel with `peer` (as payer or payee).
fn channel_with(up: &NetnsFerry, peer: &str) -> Option<Value> {
    let w = up.json(&["wallet", "--json"]).expect("wallet");
    w["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["peer"] == peer)
        .cloned()
}

/// Contract peers of `up` in `role`.
fn contract_peers(up: &NetnsFerry, role: &str) -> Vec<String> {
    let mut v: Vec<String> = up
        .json(&["contracts", "--json"])
        .expect("contracts")
        .as_array()
        .expect("array")
        .iter()
        .filter(|k| k["role"] == role)
        .filter_map(|k| k["peer"].as_str().map(String::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Paid relaying (issue 8): client (`NS_A`) → relay (`--relay-node`, public segment) → exit
/// (`NS_B`) → server namespace, `ferry tunnel up --via R --exit E`, every node on the market
/// and one shared chain. Each hop is paid by its neighbour for the circuit's data cells
/// (`ferry_daemon::market`, "Circuit relaying"): the client pays the relay at `RELAY_PRICE`,
/// the relay pays the exit at `PRICE`. After a warm-up download (2 MiB) that opens both
/// channels, the client uploads `CIRCUIT_UP_MIB` MiB and downloads `CIRCUIT_DOWN_MIB` MiB.
///
/// The client pays the relay for upstream cells by the exit's own counts, reported inside the
/// circuit (a client that halved them fails the relay's check below), and the relay pays the
/// exit by the exit's receipts.
///
/// Asserts: each pair's meters agree (5 %); the cells metered for the download cover its
/// payload, and so do those of the upload (≥ payload, ≤ +25 % for IP/TCP headers, the 29-byte
/// cell overhead and the ACKs); the relay earned more than it paid;
/// the relay's earnings equal the client's channel cumulative and `due(relay's meter)` to
/// within one voucher interval, the same for the exit against the relay; the exit has no
/// contract with the client and the client no channel with the exit (each hop deals with its
/// neighbours only); after `ferry stop` both claims reach the chain.
#[test]
fn a_client_pays_a_relay_that_pays_the_exit_in_namespaces() {
    let name = "a_client_pays_a_relay_that_pays_the_exit_in_namespaces";
    let why = lab_skip_reason(&["python3"])
        .or_else(|| (!Path::new("/dev/net/tun").exists()).then(|| "no /dev/net/tun".to_string()));
    if let Some(why) = why {
        eprintln!("SKIP {name}: {why}");
        return;
    }
    let t0 = Instant::now();
    let prefix = format!("mr{:x}", std::process::id() & 0xffff);
    let l = Lab::up(&prefix);
    let (client_ns, exit_ns, boot_ns) = (
        l.lab.var("NS_A").to_string(),
        l.lab.var("NS_B").to_string(),
        l.lab.var("NS_BOOT").to_string(),
    );

    let mut exit_args = l.market_args();
    exit_args.extend(
        [
            "--exit-node",
            "--uplink",
            "up0",
            "--exit-policy",
            &l.dir.path().join("policy.toml").to_string_lossy(),
            "--price-per-kib",
            &PRICE.to_string(),
        ]
        .map(String::from),
    );
    let exit =
        NetnsFerry::start(ferry(), &exit_ns, EXIT_PORT, &l.peer_boot, &exit_args).expect("exit");
    let mut relay_args = l.market_args();
    relay_args.extend(
        [
            "--relay-node",
            "--price-per-kib",
            &RELAY_PRICE.to_string(),
            "--max-price-per-kib",
            &PRICE.to_string(),
        ]
        .map(String::from),
    );
    let relay =
        NetnsFerry::start(ferry(), &boot_ns, 33460, &l.peer_boot, &relay_args).expect("relay");
    let mut client_args = l.market_args();
    client_args.extend(["--max-price-per-kib".to_string(), RELAY_PRICE.to_string()]);
    let client =
        NetnsFerry::start(ferry(), &client_ns, 33445, &l.peer_boot, &client_args).expect("client");
    let exit_addr = l.fund(&exit);
    let relay_addr = l.fund(&relay);
    let client_addr = l.fund(&client);

    let (c_pk, r_pk, e_pk) = (
        client.id("public_key"),
        relay.id("public_key"),
        exit.id("public_key"),
    );
    // Links client–relay and relay–exit (service nodes, befriended by key).
    for (a, b) in [(&client, &relay), (&relay, &exit)] {
        assert!(
            a.cli(&["friend", "add", &b.id("public_key"), "circuit"])
                .is_some_and(|o| o.status.success())
        );
    }
    let start = Instant::now();
    while !(client.online(&r_pk) && relay.online(&e_pk)) {
        assert!(start.elapsed() < ONLINE_TIMEOUT, "links not online");
        std::thread::sleep(Duration::from_millis(200));
    }
    let up = client
        .cli(&[
            "tunnel",
            "up",
            "--via",
            &r_pk,
            "--exit",
            &e_pk,
            "--route",
            "10.77.2.0/24",
        ])
        .expect("tunnel up");
    assert!(
        up.status.success(),
        "tunnel up --via --exit: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    let py = l.client_py();
    let run = |mode: &str, mib: u64| -> f64 {
        let start = Instant::now();
        let r = loop {
            let r = in_ns(
                &client_ns,
                &["python3", &py, mode, SERVER_V4, &mib.to_string()],
            );
            if r.0 || start.elapsed() > Duration::from_secs(40) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let w: Vec<&str> = r.1.split_whitespace().collect();
        assert!(r.0 && w.first() == Some(&"OK"), "{mode}: {}", r.1);
        assert_eq!(w.get(1), Some(&(mib << 20).to_string().as_str()), "{}", r.1);
        w.get(2).and_then(|x| x.parse().ok()).unwrap_or(0.0)
    };
    // Warm-up: the first cells flow on the unsecured allowances while both payers open their
    // channels and both servers check them on the chain.
    let warm_s = run("down", 2);
    // An upload: its cells are paid only as far as the exit's receipts, chained back through
    // the relay, confirm them.
    let before_up = used(&relay, "server");
    let up_s = run("up", CIRCUIT_UP_MIB);
    let before = used(&relay, "server");
    let down_s = run("down", CIRCUIT_DOWN_MIB);
    eprintln!(
        "MEASURE paid relay: warm-up 2 MiB down in {warm_s:.2} s, {CIRCUIT_UP_MIB} MiB up in \
         {up_s:.2} s, {CIRCUIT_DOWN_MIB} MiB down in {down_s:.2} s through relay and exit \
         (debug build)"
    );

    // Let receipts and vouchers settle on both links.
    let cumulative = |payer: &NetnsFerry, payee: &str| {
        channel_with(payer, payee).map_or(0, |c| wei(&c["cumulative"]))
    };
    let earned =
        |up: &NetnsFerry| wei(&up.json(&["earnings", "--json"]).expect("earnings")["total"]);
    let interval_r = due_at(VOUCHER_KIB * 1024, RELAY_PRICE);
    let interval_e = due_at(VOUCHER_KIB * 1024, PRICE);
    let start = Instant::now();
    let (r_metered, r_earned, c_cum, e_metered, e_earned, r_cum) = loop {
        std::thread::sleep(Duration::from_secs(2));
        let r_metered = used(&relay, "server");
        let e_metered = used(&exit, "server");
        let (r_earned, e_earned) = (earned(&relay), earned(&exit));
        let (c_cum, r_cum) = (cumulative(&client, &r_pk), cumulative(&relay, &e_pk));
        let settled = c_cum == r_earned
            && r_cum == e_earned
            && due_at(r_metered, RELAY_PRICE).abs_diff(r_earned) <= interval_r
            && due_at(e_metered, PRICE).abs_diff(e_earned) <= interval_e;
        if settled || start.elapsed() > Duration::from_secs(30) {
            break (r_metered, r_earned, c_cum, e_metered, e_earned, r_cum);
        }
    };
    let c_metered = used(&client, "client");
    let r_paying = used(&relay, "client");
    eprintln!(
        "MEASURE paid relay: relay metered {r_metered} B (client {c_metered} B), earned \
         {r_earned} wei of due {} (client cumulative {c_cum}); exit metered {e_metered} B (relay \
         {r_paying} B), earned {e_earned} wei of due {} (relay cumulative {r_cum})",
        due_at(r_metered, RELAY_PRICE),
        due_at(e_metered, PRICE)
    );
    // Each pair counts the same cells, except those lost on the way or gated.
    assert!(
        r_metered.abs_diff(c_metered) <= c_metered / 20,
        "relay metered {r_metered} B, client {c_metered} B"
    );
    assert!(
        e_metered.abs_diff(r_paying) <= r_paying / 20,
        "exit metered {e_metered} B, relay {r_paying} B"
    );
    let upload = before - before_up;
    let up_payload = CIRCUIT_UP_MIB << 20;
    assert!(
        upload >= up_payload && upload <= up_payload + up_payload / 4,
        "the upload metered {upload} B of cells for {up_payload} B of payload"
    );
    let down = r_metered - before;
    let payload = CIRCUIT_DOWN_MIB << 20;
    assert!(
        down >= payload && down <= payload + payload / 4,
        "the download metered {down} B of cells for {payload} B of payload"
    );
    // Payment on each link: vouchers = earnings = due(metered) within one voucher interval.
    assert_eq!(
        c_cum, r_earned,
        "the client's vouchers are the relay's earnings"
    );
    assert_eq!(
        r_cum, e_earned,
        "the relay's vouchers are the exit's earnings"
    );
    assert!(
        due_at(r_metered, RELAY_PRICE).abs_diff(r_earned) <= interval_r,
        "relay paid {r_earned}, due {} (one voucher interval = {interval_r} wei)",
        due_at(r_metered, RELAY_PRICE)
    );
    assert!(
        due_at(e_metered, PRICE).abs_diff(e_earned) <= interval_e,
        "exit paid {e_earned}, due {} (one voucher interval = {interval_e} wei)",
        due_at(e_metered, PRICE)
    );
    // The relay keeps its margin: it earned more than it paid for the same cells.
    assert!(
        r_earned > e_earned,
        "relay earned {r_earned}, paid {e_earned}"
    );
    // Neighbours only: the exit deals with the relay, the client never with the exit.
    assert_eq!(contract_peers(&exit, "server"), vec![r_pk.clone()]);
    assert_eq!(contract_peers(&relay, "server"), vec![c_pk.clone()]);
    assert_eq!(contract_peers(&client, "client"), vec![r_pk.clone()]);
    assert!(channel_with(&client, &e_pk).is_none());
    assert!(channel_with(&exit, &c_pk).is_none());

    // Both payees claim their newest voucher on shutdown; the chain shows it, from the right
    // sender to the right receiver.
    let links = [
        (&relay, &client, &r_pk, r_earned, &client_addr, &relay_addr),
        (&exit, &relay, &e_pk, e_earned, &relay_addr, &exit_addr),
    ];
    let ids: Vec<String> = links
        .iter()
        .map(|(_, payer, payee, ..)| {
            channel_with(payer, payee).expect("channel")["channel_id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    for ((payee, _, _, earned, sender, receiver), id) in links.iter().zip(&ids) {
        assert!(payee.cli(&["stop"]).is_some_and(|o| o.status.success()));
        let start = Instant::now();
        let ch = loop {
            let ch = l.chain(&["chain", "channel", id]);
            if wei(&ch["claimed"]) == *earned || start.elapsed() > Duration::from_secs(20) {
                break ch;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(
            wei(&ch["claimed"]),
            *earned,
            "claimed on the chain = earnings"
        );
        assert_eq!(
            ch["sender"].as_str().map(str::to_lowercase),
            Some(sender.to_lowercase())
        );
        assert_eq!(
            ch["receiver"].as_str().map(str::to_lowercase),
            Some(receiver.to_lowercase())
        );
    }
    eprintln!("MEASURE paid relay: test body {:?}", t0.elapsed());
}
