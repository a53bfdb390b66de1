//! TAP mode (issue 7 item 5, "TAP: two namespaces bridged at layer 2 (ARP resolves across)"):
//! two `ferry up` peers in their own network namespaces (`lab/nat.sh up none:none`, as
//! `tests/tunnel.rs`) become friends and run `ferry tunnel up --tap`. In each node's namespace
//! a Linux bridge joins the TAP device `ferrytap0` and a veth to a separate LAN host namespace
//! (host A 10.99.0.1/24, host B 10.99.0.2/24). Then `ping -c 3 10.99.0.2` from host A must
//! succeed, host A's neighbour table must hold host B's MAC (ARP resolved across ferry), and
//! `ferry tunnel status --json` must show TAP frames both ways, learnt MACs and the peer. Bad
//! TAP packets (truncated, group source MAC) sent as `ferry friend packet` are dropped and
//! counted. `tunnel down` removes the TAP device. (A kernel without Linux bridges gets the
//! fallback: 10.99.0.1/24 and 10.99.0.2/24 right on the two TAP devices, pinged node to node.)
//!
//! Needs root, iproute2 (with bridge support), iptables, ping and `/dev/net/tun`; skipped with a
//! message otherwise. Bounded (90 s to online, 20 s to TAP peers, 30 s of pings); the lab and
//! the LAN namespaces are torn down on drop (processes killed by PID).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::lab::{NatLab, NetnsFerry, lab_skip_reason};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

/// Public DHT nodes (the first also a TCP relay).
const PUBLIC_NODES: u16 = 4;
/// Budget from `friend add` to both peers online.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(90);
/// The TAP device `ferry tunnel up --tap` opens.
const TAP: &str = "ferrytap0";
/// MTU of the TAP device (ferry_tunnel::tap::TAP_MTU).
const TAP_MTU: &str = "1358";

fn skip_reason() -> Option<String> {
    if let Some(why) = lab_skip_reason(&["ping"]) {
        return Some(why);
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

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

/// A LAN host namespace, deleted (processes killed by PID first) on drop.
struct LanNs(String);

impl Drop for LanNs {
    fn drop(&mut self) {
        let pids = sh(&["ip", "netns", "pids", &self.0]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// `ferry up` in namespace `ns` (see [`NetnsFerry::start`]).
fn daemon(
    ns: &str,
    port: u16,
    bootstrap: &[String],
    extra: &[String],
) -> anyhow::Result<NetnsFerry> {
    NetnsFerry::start(ferry(), ns, port, bootstrap, extra)
}

/// A LAN behind node namespace `node_ns`: bridge `brlan` (TAP device + veth `lanport`) and a
/// host namespace `lan` whose `eth0` has `addr`.
fn lan(node_ns: &str, lan: &str, addr: &str) -> LanNs {
    ok(&["ip", "netns", "add", lan]);
    let guard = LanNs(lan.to_string());
    ok(&[
        "ip", "-n", node_ns, "link", "add", "brlan", "type", "bridge",
    ]);
    ok(&["ip", "-n", node_ns, "link", "set", TAP, "master", "brlan"]);
    ok(&[
        "ip", "-n", node_ns, "link", "add", "lanport", "mtu", TAP_MTU, "type", "veth", "peer",
        "name", "eth0", "mtu", TAP_MTU, "netns", lan,
    ]);
    ok(&[
        "ip", "-n", node_ns, "link", "set", "lanport", "master", "brlan",
    ]);
    for dev in [TAP, "lanport", "brlan"] {
        ok(&["ip", "-n", node_ns, "link", "set", dev, "up"]);
    }
    ok(&["ip", "-n", lan, "addr", "add", addr, "dev", "eth0"]);
    ok(&["ip", "-n", lan, "link", "set", "lo", "up"]);
    ok(&["ip", "-n", lan, "link", "set", "eth0", "up"]);
    guard
}

/// Whether this kernel can make a Linux bridge (tried in a scratch namespace `ns`).
fn bridge_supported(ns: &str) -> bool {
    ok(&["ip", "netns", "add", ns]);
    let _guard = LanNs(ns.to_string());
    sh(&["ip", "-n", ns, "link", "add", "brchk", "type", "bridge"])
        .status
        .success()
}

/// Fallback without bridges: `addr` directly on the TAP device in `node_ns`.
fn tap_address(node_ns: &str, addr: &str) {
    ok(&["ip", "-n", node_ns, "addr", "add", addr, "dev", TAP]);
    ok(&["ip", "-n", node_ns, "link", "set", TAP, "up"]);
}

/// Retries `f` for up to `budget`; returns the last result.
fn retry(budget: Duration, mut f: impl FnMut() -> (bool, String)) -> (bool, String) {
    let start = Instant::now();
    loop {
        let r = f();
        if r.0 || start.elapsed() > budget {
            return r;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `link/ether` of `dev` in `ns`.
fn mac_of(ns: &str, dev: &str) -> String {
    let o = sh(&["ip", "-n", ns, "link", "show", dev]);
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    s.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {s}"))
        .to_string()
}

fn tap_u64(s: &serde_json::Value, k: &str) -> u64 {
    s["tap"][k].as_u64().unwrap_or(0)
}

#[test]
fn tap_bridges_two_lans_and_arp_resolves_across() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP tap_bridges_two_lans_and_arp_resolves_across: {why}");
        return;
    }
    let t0 = Instant::now();
    let prefix = format!("tp{:x}", std::process::id() & 0xffff);
    let lab = NatLab::up("none:none", &prefix).expect("lab");
    let boot_ns = lab.var("NS_BOOT").to_string();
    let boot_ip = lab.var("BOOT_IP").to_string();
    let relay_port = 33500u16;
    let first = daemon(
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
        public.push(daemon(&boot_ns, 33445 + i, &boot, &[]).expect("public node"));
    }
    let mut peer_boot = boot.clone();
    for (i, d) in public.iter().enumerate().skip(1) {
        peer_boot.push(format!("{boot_ip}:{}:{}", 33445 + i, d.dht_key()));
    }
    let relay = vec![
        "--relay-peer".to_string(),
        format!("{boot_ip}:{relay_port}:{first_key}"),
    ];
    let a = daemon(lab.var("NS_A"), 33445, &peer_boot, &relay).expect("a");
    let b = daemon(lab.var("NS_B"), 33445, &peer_boot, &relay).expect("b");
    for d in [&a, &b] {
        assert!(
            d.cli(&["set", "auto-accept", "on"])
                .is_some_and(|o| o.status.success())
        );
    }
    let (a_pk, b_pk) = (a.id("public_key"), b.id("public_key"));
    let start = Instant::now();
    assert!(
        a.cli(&["friend", "add", &b.id("tox_id"), "tap"])
            .is_some_and(|o| o.status.success())
    );
    while !(a.online(&b_pk) && b.online(&a_pk)) {
        assert!(
            start.elapsed() < ONLINE_TIMEOUT,
            "friends not online in {ONLINE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("MEASURE tap: friends online after {:?}", start.elapsed());

    // A bad TAP device name is refused before any device exists.
    let bad = a
        .cli(&["tunnel", "up", "--tap", "--tap-device", "bad/name"])
        .expect("up");
    assert!(!bad.status.success());
    let s = a.json(&["tunnel", "status", "--json"]).expect("status");
    assert_eq!(s["up"], false, "{s}");

    for d in [&a, &b] {
        let up = d.cli(&["tunnel", "up", "--tap", "--json"]).expect("up");
        assert!(
            up.status.success(),
            "tunnel up --tap: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&up.stdout).expect("json");
        assert_eq!(s["up"], true, "{s}");
        assert_eq!(s["tap"]["device"], TAP, "{s}");
        assert_eq!(s["tap"]["mtu"], 1358, "{s}");
    }

    // The two LANs: host A and host B, each behind its node's bridge. A kernel without bridges
    // gets the fallback: the addresses right on the TAP devices, pinged from node A.
    let bridged = bridge_supported(&format!("{prefix}-brchk"));
    let (lans, host_a, mac_b) = if bridged {
        let lan_a = lan(a.ns(), &format!("{prefix}-lana"), "10.99.0.1/24");
        let lan_b = lan(b.ns(), &format!("{prefix}-lanb"), "10.99.0.2/24");
        let mac_b = mac_of(&lan_b.0, "eth0");
        let host_a = lan_a.0.clone();
        (vec![lan_a, lan_b], host_a, mac_b)
    } else {
        eprintln!("no Linux bridge support: addressing the TAP devices directly");
        tap_address(a.ns(), "10.99.0.1/24");
        tap_address(b.ns(), "10.99.0.2/24");
        (Vec::new(), a.ns().to_string(), mac_of(b.ns(), TAP))
    };

    // Both nodes learn that the other runs TAP (hellos).
    let start = Instant::now();
    loop {
        let sa = a.json(&["tunnel", "status", "--json"]).expect("status a");
        let sb = b.json(&["tunnel", "status", "--json"]).expect("status b");
        let knows = |s: &serde_json::Value, pk: &str| {
            s["tap"]["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|k| k == pk))
        };
        if knows(&sa, &b_pk) && knows(&sb, &a_pk) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "TAP peers not learnt:\nA: {sa}\nB: {sb}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Host A pings host B across the two bridges and ferry (bounded retries).
    let start = Instant::now();
    let mut last;
    let pinged = loop {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &host_a,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.99.0.2",
        ]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{last}");
    let neigh = sh(&["ip", "-n", &host_a, "neigh", "show", "10.99.0.2"]);
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    let sa = a.json(&["tunnel", "status", "--json"]).expect("status a");
    let sb = b.json(&["tunnel", "status", "--json"]).expect("status b");
    eprintln!("A: {sa}\nB: {sb}\nhost A neigh: {neigh}");
    assert!(pinged, "ping 10.99.0.2 from host A failed: {last}");
    assert!(
        neigh.contains(&mac_b),
        "host A's neighbour table lacks host B's MAC {mac_b}: {neigh}"
    );
    for s in [&sa, &sb] {
        // ARP request + reply and 3 echo requests/replies at least.
        assert!(tap_u64(s, "tx_frames") >= 4, "{s}");
        assert!(tap_u64(s, "rx_frames") >= 4, "{s}");
        assert!(tap_u64(s, "tx_bytes") > 0, "{s}");
        assert!(tap_u64(s, "rx_bytes") > 0, "{s}");
        assert!(tap_u64(s, "macs") >= 1, "{s}");
        assert_eq!(tap_u64(s, "dropped_bad_length"), 0, "{s}");
        assert_eq!(tap_u64(s, "dropped_group_source"), 0, "{s}");
    }

    // Full-size frames: a 1358-byte IP packet (the TAP MTU) with DF makes a 1372-byte frame,
    // the largest a TAP packet carries.
    let (big, out) = retry(Duration::from_secs(10), || {
        let o = sh(&[
            "ip",
            "netns",
            "exec",
            &host_a,
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1330",
            "10.99.0.2",
        ]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    });
    assert!(big, "full-size ping failed: {out}");
    // The human-readable status shows the TAP part.
    let text = a.cli(&["tunnel", "status"]).expect("status");
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("tap device") && text.contains(TAP), "{text}");

    // Bad TAP packets from the network (custom lossy id 224 sent by A with `ferry friend
    // packet`): truncated (13 bytes, less than a header) and a group source MAC. B drops and
    // counts each and writes none to its TAP device.
    let before = b.json(&["tunnel", "status", "--json"]).expect("status b");
    let truncated = format!("e0{}", "02".repeat(13));
    let group_src = format!(
        "e0{}{}0806{}",
        "02".repeat(6),
        "01005e000001",
        "00".repeat(28)
    );
    for hex in [&truncated, &group_src] {
        for _ in 0..3 {
            assert!(
                a.cli(&["friend", "packet", &b_pk, hex])
                    .is_some_and(|o| o.status.success())
            );
        }
    }
    let t = Instant::now();
    let grew = |s: &serde_json::Value, k: &str| tap_u64(s, k) - tap_u64(&before, k);
    let after = loop {
        let s = b.json(&["tunnel", "status", "--json"]).expect("status b");
        if (grew(&s, "dropped_bad_length") >= 3 && grew(&s, "dropped_group_source") >= 3)
            || t.elapsed() > Duration::from_secs(10)
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("B after bad frames: {after}");
    // Lossy packets: allow a loss on the way, but every one that arrived was dropped.
    assert!(grew(&after, "dropped_bad_length") >= 1, "{after}");
    assert!(grew(&after, "dropped_group_source") >= 1, "{after}");
    assert!(grew(&after, "dropped") >= 2, "{after}");

    // Down removes the TAP device; status has no `tap` then.
    assert!(
        a.cli(&["tunnel", "down"])
            .is_some_and(|o| o.status.success())
    );
    let s = a.json(&["tunnel", "status", "--json"]).expect("status");
    assert_eq!(s["up"], false);
    assert!(s["tap"].is_null(), "{s}");
    let gone = sh(&["ip", "-n", a.ns(), "link", "show", TAP]);
    assert!(!gone.status.success(), "{TAP} still present after down");
    eprintln!(
        "MEASURE tap: whole test {:?} (bridged: {bridged})",
        t0.elapsed()
    );
    drop(lans);
    drop((a, b, public));
    drop(lab);
}
