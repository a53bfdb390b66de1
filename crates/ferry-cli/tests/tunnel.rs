//! The IP tunnel, first slice (issue 7): two `ferry up` peers in their own network namespaces
//! (`lab/nat.sh up none:none`: hosts behind plain routers, a public segment with ferry DHT nodes
//! and a TCP relay) become friends, run `ferry tunnel up` (a TUN device `ferry0` with each
//! node's mesh address in `fd54:6f78::/32`), and `ping -6 -c 3 <peer's mesh address>` must
//! succeed; `ferry tunnel status --json` must show packets both ways on both sides.
//!
//! Needs root, iproute2, iptables, ping and `/dev/net/tun`; skipped with a message otherwise.
//! Bounded (90 s to online, 30 s of pings); the lab is torn down on drop (processes killed by PID).

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

fn skip_reason() -> Option<String> {
    if let Some(why) = lab_skip_reason(&["ping"]) {
        return Some(why);
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
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

#[test]
fn ping6_through_the_tunnel() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP ping6_through_the_tunnel: {why}");
        return;
    }
    let prefix = format!("tn{:x}", std::process::id() & 0xffff);
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
        a.cli(&["friend", "add", &b.id("tox_id"), "tunnel"])
            .is_some_and(|o| o.status.success())
    );
    while !(a.online(&b_pk) && b.online(&a_pk)) {
        assert!(
            start.elapsed() < ONLINE_TIMEOUT,
            "friends not online in {ONLINE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("MEASURE tunnel: friends online after {:?}", start.elapsed());
    // Counts datagrams of the data plane's transport kind (first UDP payload byte 0xd4) that
    // reach B: the tunnel must use the data plane on this direct path.
    let u32_rule = [
        "-w",
        "-I",
        "INPUT",
        "-p",
        "udp",
        "-m",
        "u32",
        "--u32",
        "0>>22&0x3C@8>>24=0xd4",
        "-j",
        "ACCEPT",
    ];
    let counted = Command::new("ip")
        .args(["netns", "exec", b.ns(), "iptables"])
        .args(u32_rule)
        .status()
        .is_ok_and(|s| s.success());

    let mut addrs = Vec::new();
    for d in [&a, &b] {
        let up = d.cli(&["tunnel", "up", "--json"]).expect("tunnel up");
        assert!(
            up.status.success(),
            "tunnel up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&up.stdout).expect("json");
        assert_eq!(s["up"], true);
        assert_eq!(s["mtu"], 1372);
        let addr = s["address"].as_str().expect("address").to_string();
        assert!(addr.starts_with("fd54:6f78:"), "{addr}");
        addrs.push(addr);
    }
    // Both mesh addresses are on the devices inside their namespaces.
    for (d, addr) in [(&a, &addrs[0]), (&b, &addrs[1])] {
        let out = Command::new("ip")
            .args(["-n", d.ns(), "-6", "addr", "show", "dev", "ferry0"])
            .output()
            .expect("ip addr");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(addr.as_str()),
            "{addr} not on ferry0 in {}",
            d.ns()
        );
    }

    // ping A → B's mesh address; retried while the address leaves DAD (bounded).
    let start = Instant::now();
    let mut last;
    let ok = loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                a.ns(),
                "ping",
                "-6",
                "-c",
                "3",
                "-i",
                "0.2",
            ])
            .args(["-W", "2", &addrs[1]])
            .output()
            .expect("ping");
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
    let sa = a.json(&["tunnel", "status", "--json"]).expect("status a");
    let sb = b.json(&["tunnel", "status", "--json"]).expect("status b");
    eprintln!("A: {sa}\nB: {sb}");
    assert!(ok, "ping -6 {} failed: {last}", addrs[1]);
    for s in [&sa, &sb] {
        assert!(s["tx_packets"].as_u64().unwrap_or(0) >= 3, "{s}");
        assert!(s["rx_packets"].as_u64().unwrap_or(0) >= 3, "{s}");
        assert!(s["tx_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(s["rx_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
        assert_eq!(s["dropped_bad_source"], 0, "{s}");
    }
    // Once the friends' path is direct UDP (they may start on the relay), tunnel packets go by
    // the data plane: a handshake on the first packet, then 0xd4 datagrams.
    let dp_start = Instant::now();
    let (sa, sb) = loop {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                a.ns(),
                "ping",
                "-6",
                "-c",
                "3",
                "-i",
                "0.2",
            ])
            .args(["-W", "2", &addrs[1]])
            .output();
        let sa = a.json(&["tunnel", "status", "--json"]).expect("status a");
        let sb = b.json(&["tunnel", "status", "--json"]).expect("status b");
        let has = |s: &serde_json::Value| s["dataplane"]["sessions"].as_u64().unwrap_or(0) >= 1;
        if (has(&sa) && has(&sb)) || dp_start.elapsed() > Duration::from_secs(20) {
            break (sa, sb);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "MEASURE tunnel: data plane sessions after {:?}: A {} B {}",
        dp_start.elapsed(),
        sa["dataplane"],
        sb["dataplane"]
    );
    for s in [&sa, &sb] {
        assert!(s["dataplane"]["sessions"].as_u64().unwrap_or(0) >= 1, "{s}");
        assert!(
            s["dataplane"]["handshakes"].as_u64().unwrap_or(0) >= 1,
            "{s}"
        );
        assert_eq!(s["dataplane"]["dropped"], 0, "{s}");
    }
    // The sessions may have come up during the loop's last pings (sent before the handshake
    // finished, over net_crypto): ping again now that both ends have a session.
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            a.ns(),
            "ping",
            "-6",
            "-c",
            "3",
            "-i",
            "0.2",
        ])
        .args(["-W", "2", &addrs[1]])
        .output();
    if counted {
        let out = Command::new("ip")
            .args(["netns", "exec", b.ns(), "iptables", "-w", "-nvxL", "INPUT"])
            .output()
            .expect("iptables -L");
        let text = String::from_utf8_lossy(&out.stdout);
        let pkts: u64 = text
            .lines()
            .find(|l| l.contains("u32"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        eprintln!("MEASURE tunnel: {pkts} data plane datagrams reached B");
        assert!(pkts >= 1, "no data plane datagram reached B:\n{text}");
    } else {
        eprintln!("NOTE: iptables u32 match unavailable; data plane use checked by status only");
    }
    // Status peers list the friend with its mesh address.
    assert!(
        sa["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["address"] == addrs[1].as_str()))
    );

    // Bad frames from the network (custom lossy packets with the tunnel id 222 sent by A as
    // `ferry friend packet`): truncated, a wrong payload length, a spoofed source. B drops and
    // counts every one and writes none to its TUN device.
    let b_ip: std::net::Ipv6Addr = addrs[1].parse().expect("B's address");
    let a_ip: std::net::Ipv6Addr = addrs[0].parse().expect("A's address");
    let header = |src: std::net::Ipv6Addr, plen: u16| {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&plen.to_be_bytes());
        h.extend_from_slice(&[59, 64]); // no next header, hop limit 64
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&b_ip.octets());
        h
    };
    let truncated = header(a_ip, 8)[..20].to_vec();
    let mut wrong_length = header(a_ip, 100);
    wrong_length.extend_from_slice(&[0; 8]);
    let spoofed_src: std::net::Ipv6Addr = "fd54:6f78:1111:2222:3333:4444:5555:6666"
        .parse()
        .expect("addr");
    let mut spoofed = header(spoofed_src, 8);
    spoofed.extend_from_slice(&[0; 8]);
    let before = b.json(&["tunnel", "status", "--json"]).expect("status b");
    for pkt in [&truncated, &wrong_length, &spoofed] {
        let mut hex = String::from("de");
        for byte in pkt.iter() {
            hex.push_str(&format!("{byte:02x}"));
        }
        for _ in 0..3 {
            assert!(
                a.cli(&["friend", "packet", &b_pk, &hex])
                    .is_some_and(|o| o.status.success())
            );
        }
    }
    let t = Instant::now();
    let after = loop {
        let s = b.json(&["tunnel", "status", "--json"]).expect("status b");
        let grew = |k: &str| s[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        if (grew("dropped") >= 9 && grew("dropped_bad_source") >= 3)
            || t.elapsed() > Duration::from_secs(10)
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("B after bad frames: {after}");
    let grew = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    // Lossy packets: allow a loss on the way, but every one that arrived was dropped.
    assert!(grew("dropped") >= 6, "before {before}\nafter {after}");
    assert!(
        grew("dropped_bad_source") >= 1,
        "before {before}\nafter {after}"
    );
    assert_eq!(
        grew("rx_packets"),
        0,
        "a bad frame reached the TUN: {after}"
    );

    // Down removes the device; status says down.
    assert!(
        a.cli(&["tunnel", "down"])
            .is_some_and(|o| o.status.success())
    );
    let s = a.json(&["tunnel", "status", "--json"]).expect("status");
    assert_eq!(s["up"], false);
    let gone = Command::new("ip")
        .args(["-n", a.ns(), "link", "show", "ferry0"])
        .output()
        .expect("ip link");
    assert!(!gone.status.success(), "ferry0 still present after down");
    drop((a, b, public));
    drop(lab);
}
