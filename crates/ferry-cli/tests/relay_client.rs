//! ferry's TCP relay *client* (issue 5 points 3–5): a `ferry up --no-udp` node, which sends no
//! UDP at all, announces and searches through a relay's onion and reaches its (UDP-enabled)
//! ferry friend through the relay; once through a ferry relay (`ferry up --tcp-relay`), once
//! through c-toxcore's `tox-bootstrapd` (Debian `toxcore-utils`, config in a temp dir). Both sides
//! report the friend's path as `"tcp"` with the relay. Everything runs on 127.0.0.1; times are
//! printed (run with `--nocapture`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra, KillOnDrop, free_tcp_port, free_udp_port};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(120);

fn id_field(up: &FerryUp, field: &str) -> String {
    up.json(&["id", "--json"]).expect("id")[field]
        .as_str()
        .expect("field")
        .to_string()
}

/// Polls `ferry friend list --json` until friend `pk` is online; returns its entry.
fn wait_online(up: &FerryUp, pk: &str, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let list = up.json(&["friend", "list", "--json"]).expect("friend list");
        if let Some(f) = list.as_array().expect("array").iter().find(|f| {
            f["public_key"].as_str() == Some(pk) && f["connection"].as_str() != Some("none")
        }) {
            return f.clone();
        }
        assert!(
            start.elapsed() < timeout,
            "friend {pk} not online within {timeout:?}: {list}\n{}",
            up.stderr.snapshot().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_message(up: &FerryUp, pk: &str, text: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let out = up.cli(&["messages", pk, "--json"]).expect("messages");
        let found = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["direction"] == "in" && v["text"] == text && v["friend"] == pk)
        });
        if found {
            return;
        }
        assert!(start.elapsed() < timeout, "message {text:?} never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bootstrap arguments for every infra node (a UDP-less node needs ≥ 2 onion path nodes).
fn bootstrap_args(infra: &Infra) -> Vec<String> {
    let mut v = vec!["--bootstrap".to_string(), infra.ferry_args()[1].clone()];
    for (ip, port, key) in infra.tox_bootstrap() {
        v.push("--bootstrap".into());
        v.push(format!("{ip}:{port}:{key}"));
    }
    v
}

/// A UDP-less ferry node `a` and a normal ferry node `b`, both given `relay`: `a` adds `b`,
/// they come online through the relay and chat. Returns the time from the request to online.
fn pair_through(infra: &Infra, relay: &str, what: &str) -> Duration {
    let mut a_args = bootstrap_args(infra);
    a_args.extend(["--no-udp".into(), "--relay-peer".into(), relay.to_string()]);
    let mut b_args = infra.ferry_args();
    b_args.extend(["--relay-peer".into(), relay.to_string()]);
    let a = FerryUp::start(ferry(), &a_args).expect("a (--no-udp)");
    let b = FerryUp::start(ferry(), &b_args).expect("b");
    assert!(
        b.cli(&["set", "auto-accept", "on"])
            .expect("cli")
            .status
            .success()
    );
    let (a_pk, b_pk) = (id_field(&a, "public_key"), id_field(&b, "public_key"));
    let start = Instant::now();
    let out = a
        .cli(&["friend", "add", &id_field(&b, "tox_id"), "hi over tcp"])
        .expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fa = wait_online(&a, &b_pk, STEP);
    let online = start.elapsed();
    let fb = wait_online(&b, &a_pk, STEP);
    println!("{what}: no-UDP ferry online through the relay after {online:?}: {fa} / {fb}");
    assert_eq!(fa["connection"], "tcp", "{fa}");
    assert_eq!(fa["relay"].as_str(), Some(relay), "{fa}");
    assert_eq!(fb["connection"], "tcp", "{fb}");
    let status = a.json(&["status", "--json"]).expect("status");
    assert_eq!(status["connection"], "tcp", "{status}");
    let out = a.cli(&["send", &b_pk, "ping over tcp"]).expect("send");
    assert!(out.status.success());
    wait_message(&b, &a_pk, "ping over tcp", STEP);
    let out = b.cli(&["send", &a_pk, "pong over tcp"]).expect("send");
    assert!(out.status.success());
    wait_message(&a, &b_pk, "pong over tcp", STEP);
    assert!(a.stop().expect("stop a"));
    assert!(b.stop().expect("stop b"));
    online
}

#[test]
fn no_udp_ferry_reaches_its_friend_through_a_ferry_relay() {
    let infra = Infra::new(3).expect("infra");
    let port = free_tcp_port();
    let mut args = infra.ferry_args();
    args.extend(["--tcp-relay".to_string(), port.to_string()]);
    let relay = FerryUp::start(ferry(), &args).expect("ferry up --tcp-relay");
    let key = relay
        .json(&["relay", "status", "--json"])
        .expect("relay status")["public_key"]
        .as_str()
        .expect("key")
        .to_uppercase();
    // Let the relay node join the DHT, as a long-running relay would have.
    std::thread::sleep(Duration::from_secs(3));
    let t = pair_through(&infra, &format!("127.0.0.1:{port}:{key}"), "ferry relay");
    let s = relay.json(&["relay", "status", "--json"]).expect("status");
    println!("relay status: {s}");
    assert!(s["onion_requests"].as_u64() > Some(0), "{s}");
    assert!(s["bytes_relayed"].as_u64() > Some(0), "{s}");
    assert!(t < STEP);
    assert!(relay.stop().expect("stop relay"));
}

/// c-toxcore's `tox-bootstrapd` with a TCP relay, on loopback ports, config in a temp dir.
struct Bootstrapd {
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
    udp_port: u16,
    tcp_port: u16,
    public_key: String,
}

impl Bootstrapd {
    fn start(bootstrap: (String, u16, String)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (udp_port, tcp_port) = (free_udp_port(), free_tcp_port());
        let d = dir.path().display();
        let conf = format!(
            "port = {udp_port}\nkeys_file_path = \"{d}/keys\"\npid_file_path = \"{d}/pid\"\n\
             enable_ipv6 = false\nenable_ipv4_fallback = true\nenable_lan_discovery = false\n\
             enable_tcp_relay = true\ntcp_relay_ports = [{tcp_port}]\nenable_motd = false\n\
             motd = \"ferry\"\nbootstrap_nodes = ({{ address = \"{}\"\nport = {}\n\
             public_key = \"{}\" }})\n",
            bootstrap.0, bootstrap.1, bootstrap.2
        );
        let path = dir.path().join("tox-bootstrapd.conf");
        std::fs::write(&path, conf).expect("config");
        let mut child = Command::new("tox-bootstrapd")
            .arg(format!("--config={}", path.display()))
            .args(["--foreground", "--log-backend=stdout"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tox-bootstrapd (Debian toxcore-utils) must be installed");
        let stdout = child.stdout.take().expect("stdout");
        let child = KillOnDrop(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(k) = line.strip_prefix("Public Key: ") {
                    let _ = tx.send(k.trim().to_string());
                }
            }
        });
        let public_key = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tox-bootstrapd printed its key");
        Self {
            _child: child,
            _dir: dir,
            udp_port,
            tcp_port,
            public_key,
        }
    }
}

#[test]
fn no_udp_ferry_reaches_its_friend_through_a_c_toxcore_relay() {
    let infra = Infra::new(3).expect("infra");
    let boot = infra.tox_bootstrap().remove(0);
    let tbd = Bootstrapd::start(boot);
    println!(
        "tox-bootstrapd: UDP {} TCP {} key {}",
        tbd.udp_port, tbd.tcp_port, tbd.public_key
    );
    std::thread::sleep(Duration::from_secs(3));
    let relay = format!("127.0.0.1:{}:{}", tbd.tcp_port, tbd.public_key);
    let t = pair_through(&infra, &relay, "tox-bootstrapd relay");
    assert!(t < STEP);
}

/// Interop over relays end to end: a `--no-udp` ferry node and a UDP-disabled c-toxcore 0.2.18
/// client (`toxpeer --udp-disabled`) become friends and chat with nothing but a c-toxcore relay
/// (`tox-bootstrapd`) between them: onion over TCP, OOB cookies and net_crypto over relay data,
/// in both implementations.
#[test]
fn no_udp_ferry_and_udp_disabled_c_toxcore_chat_through_tox_bootstrapd() {
    if ferry_testkit::toxpeer_path().is_err() {
        eprintln!("SKIP: no toxpeer (install libtoxcore-dev, pkg-config, cc)");
        return;
    }
    let infra = Infra::new(3).expect("infra");
    let tbd = Bootstrapd::start(infra.tox_bootstrap().remove(0));
    std::thread::sleep(Duration::from_secs(3));
    let relay = format!("127.0.0.1:{}:{}", tbd.tcp_port, tbd.public_key);
    let mut tox = ferry_testkit::ToxClient::spawn(&ferry_testkit::ToxClientOptions {
        udp_disabled: true,
        bootstrap: infra.tox_bootstrap(),
        tcp_relays: vec![("127.0.0.1".into(), tbd.tcp_port, tbd.public_key.clone())],
        auto_accept: true,
        seconds: Some(300),
        ..ferry_testkit::ToxClientOptions::default()
    })
    .expect("toxpeer");
    let mut args = bootstrap_args(&infra);
    args.extend(["--no-udp".into(), "--relay-peer".into(), relay.clone()]);
    let a = FerryUp::start(ferry(), &args).expect("ferry --no-udp");
    let tox_pk = tox.public_key().to_string();
    let start = Instant::now();
    let out = a
        .cli(&["friend", "add", &tox.address, "hello c-toxcore over tcp"])
        .expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = wait_online(&a, &tox_pk, STEP);
    let online = start.elapsed();
    let line = tox
        .wait_for("FRIEND_CONNECTION 0 ", STEP)
        .expect("tox sees ferry");
    println!(
        "ferry --no-udp <-> c-toxcore --udp-disabled via tox-bootstrapd: online after {online:?}: {f} / {line}"
    );
    assert_eq!(f["connection"], "tcp", "{f}");
    assert!(line.ends_with("tcp"), "{line}");
    let out = a
        .cli(&["send", &tox_pk, "from ferry over tcp"])
        .expect("send");
    assert!(out.status.success());
    tox.wait_for("MESSAGE 0 normal from ferry over tcp", STEP)
        .expect("c-toxcore got it");
    tox.send_command("SEND 0 from c-toxcore over tcp")
        .expect("SEND");
    wait_message(&a, &tox_pk, "from c-toxcore over tcp", STEP);
    assert!(a.stop().expect("stop"));
}

/// Interop through a **ferry** relay with a UDP-enabled ferry node: a UDP-disabled c-toxcore
/// 0.2.18 client (`toxpeer --udp-disabled`) adds a normal ferry node (auto-accept); both know
/// a `ferry up --tcp-relay` node, which is all that can connect them (c-toxcore sends no UDP).
/// Both report the path as TCP, messages go both ways, and the relay's `bytes_relayed` grows
/// with the chat.
#[test]
fn udp_disabled_c_toxcore_and_udp_ferry_chat_through_a_ferry_relay() {
    if ferry_testkit::toxpeer_path().is_err() {
        eprintln!("SKIP: no toxpeer (install libtoxcore-dev, pkg-config, cc)");
        return;
    }
    let infra = Infra::new(3).expect("infra");
    let port = free_tcp_port();
    let mut args = infra.ferry_args();
    args.extend(["--tcp-relay".to_string(), port.to_string()]);
    let relay = FerryUp::start(ferry(), &args).expect("ferry up --tcp-relay");
    let relay_status = || {
        relay
            .json(&["relay", "status", "--json"])
            .expect("relay status")
    };
    let key = relay_status()["public_key"]
        .as_str()
        .expect("key")
        .to_uppercase();
    std::thread::sleep(Duration::from_secs(3));
    let relay_arg = format!("127.0.0.1:{port}:{key}");
    let mut b_args = infra.ferry_args();
    b_args.extend(["--relay-peer".into(), relay_arg.clone()]);
    let b = FerryUp::start(ferry(), &b_args).expect("ferry (UDP on)");
    assert!(
        b.cli(&["set", "auto-accept", "on"])
            .expect("cli")
            .status
            .success()
    );
    let mut tox = ferry_testkit::ToxClient::spawn(&ferry_testkit::ToxClientOptions {
        udp_disabled: true,
        bootstrap: infra.tox_bootstrap(),
        tcp_relays: vec![("127.0.0.1".into(), port, key.clone())],
        seconds: Some(300),
        ..ferry_testkit::ToxClientOptions::default()
    })
    .expect("toxpeer");
    let tox_pk = tox.public_key().to_string();
    let start = Instant::now();
    let n = tox
        .add_friend(&id_field(&b, "tox_id"), "c-toxcore over a ferry relay")
        .expect("add");
    let f = wait_online(&b, &tox_pk, STEP);
    let line = tox
        .wait_for(&format!("FRIEND_CONNECTION {n} "), STEP)
        .expect("c-toxcore sees ferry");
    println!(
        "c-toxcore --udp-disabled -> ferry (UDP) via a ferry relay: online after {:?}: {f} / {line}",
        start.elapsed()
    );
    assert_eq!(f["connection"], "tcp", "{f}");
    assert!(line.ends_with("tcp"), "{line}");
    let before = relay_status()["bytes_relayed"].as_u64().expect("bytes");
    tox.send_command(&format!("SEND {n} from c-toxcore via ferry relay"))
        .expect("SEND");
    wait_message(&b, &tox_pk, "from c-toxcore via ferry relay", STEP);
    let out = b
        .cli(&["send", &tox_pk, "from ferry via ferry relay"])
        .expect("send");
    assert!(out.status.success());
    tox.wait_for(
        &format!("MESSAGE {n} normal from ferry via ferry relay"),
        STEP,
    )
    .expect("c-toxcore got it");
    let s = relay_status();
    println!("relay status: {s}");
    assert!(
        s["bytes_relayed"].as_u64() > Some(before),
        "{before} -> {s}"
    );
    assert!(s["clients"].as_u64() >= Some(2), "{s}");
    assert!(s["links"].as_u64() >= Some(1), "{s}");
    assert!(b.stop().expect("stop b"));
    assert!(relay.stop().expect("stop relay"));
}
