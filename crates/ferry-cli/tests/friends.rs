//! Friends and chat end to end (issue 4): real `ferry up` processes and real c-toxcore 0.2.18
//! clients (`toxpeer`) on loopback, over a small network of ferry nodes that relay onion packets
//! and store announcements. Nothing leaves 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra, ToxClient, ToxClientOptions};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(90);

fn tox_client(infra: &Infra, auto_accept: bool) -> ToxClient {
    ToxClient::spawn(&ToxClientOptions {
        port: ferry_testkit::free_udp_port(),
        bootstrap: infra.tox_bootstrap(),
        auto_accept,
        seconds: Some(300),
        ..ToxClientOptions::default()
    })
    .expect("toxpeer")
}

/// Polls `ferry friend list --json` until the friend with `pk` has a connection other than
/// "none".
fn wait_online(up: &FerryUp, pk: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let list = up.json(&["friend", "list", "--json"]).expect("friend list");
        let online = list.as_array().expect("array").iter().any(|f| {
            f["public_key"].as_str() == Some(pk) && f["connection"].as_str() != Some("none")
        });
        if online {
            return start.elapsed();
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

fn wait_packet(up: &FerryUp, hex: &str, timeout: Duration) {
    let start = Instant::now();
    let client = ferry_api::Client::new(ferry_api::socket_path(up.profile()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    loop {
        let got: Vec<ferry_api::ReceivedPacket> = rt
            .block_on(client.post("/v1/packets/list", &ferry_api::ListPackets::default()))
            .expect("packets");
        if got.iter().any(|p| p.data_hex == hex) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "packet {hex} never arrived: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tox_id(up: &FerryUp) -> String {
    up.json(&["id", "--json"]).expect("id")["tox_id"]
        .as_str()
        .expect("tox_id")
        .to_string()
}

fn public_key(up: &FerryUp) -> String {
    up.json(&["id", "--json"]).expect("id")["public_key"]
        .as_str()
        .expect("public_key")
        .to_string()
}

/// ferry adds a c-toxcore client by Tox ID; the request arrives; messages and custom packets
/// round-trip both ways.
#[test]
fn ferry_adds_c_toxcore_and_they_chat() {
    let infra = Infra::new(6).expect("infra");
    let up = FerryUp::start(ferry(), &infra.ferry_args()).expect("ferry up");
    let mut tox = tox_client(&infra, false);
    let started = Instant::now();
    let out = up
        .cli(&["friend", "add", &tox.address, "hello from ferry", "--json"])
        .expect("friend add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = tox
        .wait_for("FRIEND_REQUEST ", STEP)
        .expect("request arrives");
    let me = public_key(&up);
    assert!(
        req.to_ascii_uppercase().contains(&me.to_ascii_uppercase())
            && req.contains("hello from ferry"),
        "{req}"
    );
    tox.send_command(&format!("ACCEPT {me}")).expect("accept");
    let tox_pk = tox.public_key().to_ascii_uppercase();
    let online = wait_online(&up, &tox_pk, STEP);
    eprintln!(
        "ferry -> c-toxcore: request + accept + online in {:?}",
        started.elapsed()
    );
    let _ = online;
    tox.wait_for("FRIEND_CONNECTION 0 ", STEP)
        .expect("c-toxcore sees ferry online");

    // Messages both ways.
    let out = up.cli(&["send", &tox_pk, "ping from ferry"]).expect("send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tox.wait_for("MESSAGE 0 normal ping from ferry", STEP)
        .expect("message at c-toxcore");
    tox.send_command("SEND 0 pong from c-toxcore")
        .expect("send");
    wait_message(&up, &tox_pk, "pong from c-toxcore", STEP);
    tox.send_command("ACTION 0 waves").expect("action");
    let out = up
        .cli(&["send", &tox_pk, "waves back", "--action"])
        .expect("send");
    assert!(out.status.success());
    tox.wait_for("MESSAGE 0 action waves back", STEP)
        .expect("action at c-toxcore");

    // Read receipt: the outgoing message becomes delivered.
    let start = Instant::now();
    loop {
        let out = up.cli(&["messages", &tox_pk, "--json"]).expect("messages");
        let delivered = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["text"] == "ping from ferry" && v["delivered"] == true)
        });
        if delivered {
            break;
        }
        assert!(start.elapsed() < STEP, "no read receipt");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Custom packets both ways: lossless 160–191, lossy 200–254.
    for hex in ["a0beef", "c8cafe"] {
        let out = up.cli(&["friend", "packet", &tox_pk, hex]).expect("packet");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tox.wait_for("LOSSLESS 0 A0BEEF", STEP)
        .or_else(|_| tox.wait_for("LOSSLESS 0 a0beef", Duration::from_secs(1)))
        .expect("lossless at c-toxcore");
    tox.send_command("LOSSLESS 0 a1f00d").expect("lossless");
    wait_packet(&up, "a1f00d", STEP);
    // Lossy packets may drop: send a few.
    for _ in 0..5 {
        tox.send_command("LOSSY 0 c9d00d").expect("lossy");
    }
    wait_packet(&up, "c9d00d", STEP);
    assert!(up.stop().expect("stop"));
}

/// The c-toxcore client sends the request; ferry lists it, accepts it; they chat.
#[test]
fn c_toxcore_adds_ferry_and_they_chat() {
    let infra = Infra::new(6).expect("infra");
    let up = FerryUp::start(ferry(), &infra.ferry_args()).expect("ferry up");
    let mut tox = tox_client(&infra, false);
    let id = tox_id(&up);
    let n = tox
        .add_friend(&id, "hi ferry, c-toxcore here")
        .expect("ADD");
    let start = Instant::now();
    let pk = tox.public_key().to_ascii_uppercase();
    loop {
        let reqs = up
            .json(&["friend", "requests", "--json"])
            .expect("requests");
        if reqs.as_array().expect("array").iter().any(|r| {
            r["public_key"]
                .as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case(&pk))
                && r["message"] == "hi ferry, c-toxcore here"
        }) {
            break;
        }
        assert!(start.elapsed() < STEP, "request never listed: {reqs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = up
        .cli(&["friend", "accept", &pk, "--json"])
        .expect("accept");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_online(&up, &pk, STEP);
    tox.wait_for(&format!("FRIEND_CONNECTION {n} "), STEP)
        .expect("online at c-toxcore");
    tox.send_command(&format!("SEND {n} hello ferry"))
        .expect("send");
    wait_message(&up, &pk, "hello ferry", STEP);
    let out = up.cli(&["send", &pk, "hello c-toxcore"]).expect("send");
    assert!(out.status.success());
    tox.wait_for(&format!("MESSAGE {n} normal hello c-toxcore"), STEP)
        .expect("message");
    assert!(up.stop().expect("stop"));
}

/// Two c-toxcore clients whose only bootstrap nodes are ferry nodes become friends and chat:
/// ferry relays their onion packets and stores their announcements.
#[test]
fn c_toxcore_pair_over_a_ferry_only_network() {
    let infra = Infra::new(6).expect("infra");
    let mut a = tox_client(&infra, false);
    let mut b = tox_client(&infra, true);
    let start = Instant::now();
    let n = a.add_friend(&b.address.clone(), "over ferry").expect("ADD");
    a.wait_for(&format!("FRIEND_CONNECTION {n} "), STEP)
        .expect("a sees b");
    b.wait_for("FRIEND_CONNECTION 0 ", STEP).expect("b sees a");
    eprintln!(
        "c-toxcore <-> c-toxcore over ferry: online after {:?}",
        start.elapsed()
    );
    a.send_command(&format!("SEND {n} through ferry"))
        .expect("send");
    b.wait_for("MESSAGE 0 normal through ferry", STEP)
        .expect("message");
}

/// ferry <-> ferry: friends, chat, then kill -9 one side mid-conversation and restart it:
/// the friends reconnect by themselves and the history is intact.
#[test]
fn ferry_pair_survives_kill_9() {
    let infra = Infra::new(6).expect("infra");
    let mut a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let b = FerryUp::start(ferry(), &infra.ferry_args()).expect("b");
    let out = b.cli(&["set", "auto-accept", "on"]).expect("auto-accept");
    assert!(out.status.success());
    let (a_pk, b_pk) = (public_key(&a), public_key(&b));
    let start = Instant::now();
    let out = a.cli(&["friend", "add", &tox_id(&b), "hi b"]).expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = wait_online(&a, &b_pk, STEP);
    eprintln!(
        "ferry <-> ferry: online {:?} after the request",
        t.max(start.elapsed())
    );
    wait_online(&b, &a_pk, STEP);
    for i in 0..5 {
        let out = a
            .cli(&["send", &b_pk, &format!("before {i}")])
            .expect("send");
        assert!(out.status.success());
    }
    wait_message(&b, &a_pk, "before 4", STEP);
    // A message a has acknowledged is kept even when a dies right away: it is in a's inbox
    // journal before the acknowledgement, durably committed only after a 200 ms pause.
    let out = b
        .cli(&["send", &a_pk, "just before the kill"])
        .expect("send");
    assert!(out.status.success());
    wait_message(&a, &b_pk, "just before the kill", STEP);
    // Kill a mid-conversation: b keeps sending while a is dead.
    a.kill9().expect("kill -9");
    let out = b
        .cli(&["send", &a_pk, "while you were away"])
        .expect("send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.restart().expect("restart");
    let t = wait_online(&a, &b_pk, STEP);
    eprintln!("ferry <-> ferry: reconnected {t:?} after restart");
    wait_message(&a, &b_pk, "while you were away", STEP);
    // a's history survived: its five sent messages are still there.
    let out = a.cli(&["messages", &b_pk, "--json"]).expect("messages");
    let texts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["direction"] == "out")
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    for i in 0..5 {
        assert!(texts.contains(&format!("before {i}")), "{texts:?}");
    }
    let kept = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["direction"] == "in" && v["text"] == "just before the kill")
        .count();
    assert_eq!(
        kept, 1,
        "the message acknowledged just before the kill, once"
    );
    let out = a.cli(&["send", &b_pk, "after restart"]).expect("send");
    assert!(out.status.success());
    wait_message(&b, &a_pk, "after restart", STEP);
    assert!(a.stop().expect("stop a"));
    assert!(b.stop().expect("stop b"));
}

/// A `.tox` profile written by c-toxcore (plain and encrypted) imports into ferry with the same
/// Tox ID, name and friends; ferry's export (plain and encrypted) loads into c-toxcore with the
/// same Tox ID and friends.
#[test]
fn tox_profiles_move_between_c_toxcore_and_ferry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tox = ToxClient::spawn(&ToxClientOptions {
        port: ferry_testkit::free_udp_port(),
        seconds: Some(120),
        ..ToxClientOptions::default()
    })
    .expect("toxpeer");
    tox.request("NAME carol", "OK").expect("name");
    // Two friends: Tox IDs of two throwaway ferry identities.
    let mut friend_keys = Vec::new();
    for _ in 0..2 {
        let p = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(ferry())
            .arg("--profile")
            .arg(p.path())
            .args(["init"])
            .output()
            .expect("init");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        tox.add_friend(&id, "hi").expect("ADD");
        friend_keys.push(id[..64].to_string());
    }
    let plain = dir.path().join("carol.tox");
    let enc = dir.path().join("carol-enc.tox");
    tox.save(&plain, None).expect("save");
    tox.save(&enc, Some("correct horse"))
        .expect("save encrypted");
    let address = tox.address.clone();
    drop(tox);

    for (file, pass) in [(&plain, None), (&enc, Some("correct horse"))] {
        let profile = tempfile::tempdir().expect("profile");
        let mut cmd = std::process::Command::new(ferry());
        cmd.arg("--profile")
            .arg(profile.path())
            .arg("import")
            .arg(file)
            .arg("--json");
        if let Some(p) = pass {
            cmd.env("FERRY_PASSPHRASE", p);
        }
        let out = cmd.output().expect("import");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["tox_id"].as_str(), Some(address.as_str()));
        assert_eq!(report["friends"], 2);
        let up = FerryUp::start_with_profile(ferry(), profile, &[]).expect("up");
        let id = tox_id(&up);
        assert_eq!(id, address, "same Tox ID after import");
        let list = up.json(&["friend", "list", "--json"]).expect("list");
        let keys: Vec<String> = list
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|f| f["public_key"].as_str().map(str::to_ascii_uppercase))
            .collect();
        for k in &friend_keys {
            assert!(keys.contains(&k.to_ascii_uppercase()), "{keys:?}");
        }
        let me = up.json(&["set", "name", "carol", "--json"]).expect("self");
        assert_eq!(me["tox_id"].as_str(), Some(address.as_str()));
        // Export (the daemon must be stopped), plain and encrypted, and load into c-toxcore.
        let out_plain = dir.path().join(format!("out-{}.tox", pass.is_some()));
        let out_enc = dir.path().join(format!("out-enc-{}.tox", pass.is_some()));
        let running = up
            .cli(&["export", out_plain.to_str().expect("path")])
            .expect("export");
        assert!(
            !running.status.success(),
            "export must refuse while the daemon runs"
        );
        let profile = up.stop_keep_profile().expect("stop");
        for (out, encrypt) in [(&out_plain, false), (&out_enc, true)] {
            let mut cmd = std::process::Command::new(ferry());
            cmd.arg("--profile")
                .arg(profile.path())
                .arg("export")
                .arg(out)
                .arg("--json");
            if encrypt {
                cmd.arg("--encrypt")
                    .env("FERRY_PASSPHRASE", "battery staple");
            }
            let o = cmd.output().expect("export");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let mut loaded = ToxClient::spawn(&ToxClientOptions {
                port: ferry_testkit::free_udp_port(),
                seconds: Some(60),
                load: Some(out.clone()),
                passphrase: encrypt.then(|| "battery staple".to_string()),
                ..ToxClientOptions::default()
            })
            .expect("c-toxcore loads ferry's export");
            assert_eq!(loaded.address, address);
            let friends = loaded.friends().expect("FRIENDS");
            let keys: Vec<String> = friends
                .iter()
                .map(|f| f.public_key.to_ascii_uppercase())
                .collect();
            for k in &friend_keys {
                assert!(keys.contains(&k.to_ascii_uppercase()), "{keys:?}");
            }
        }
    }
}

/// A service node (`ferry up --relay-node`) is befriended from its public key alone: its Tox ID
/// carries the nospam derived from the key, and it accepts every request. `ferry status` reports
/// that Tox ID.
#[test]
fn service_node_is_befriended_by_public_key() {
    let infra = Infra::new(6).expect("infra");
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let mut args = infra.ferry_args();
    args.push("--relay-node".into());
    let relay = FerryUp::start(ferry(), &args).expect("relay");
    let (a_pk, r_pk) = (public_key(&a), public_key(&relay));
    let expected =
        ferry_tunnel::service_tox_id(&ferry_crypto::PublicKey::from_hex(&r_pk).expect("key"));
    // The running node's Tox ID (`ferry id` reads the profile's own nospam, kept for when the
    // profile runs as a plain node).
    let live = relay.json(&["status", "--json"]).expect("status")["tox_id"]
        .as_str()
        .expect("tox_id")
        .to_string();
    assert_eq!(live, expected.to_string());
    let start = Instant::now();
    let out = a.cli(&["friend", "add", &r_pk]).expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_online(&a, &r_pk, STEP);
    wait_online(&relay, &a_pk, STEP);
    eprintln!("service node online {:?} after add", start.elapsed());
    // Nobody accepted anything by hand, and no request is left pending on the relay.
    let reqs = relay
        .json(&["friend", "requests", "--json"])
        .expect("requests");
    assert_eq!(reqs.as_array().map(Vec::len), Some(0), "{reqs}");
    assert!(a.stop().expect("stop a"));
    assert!(relay.stop().expect("stop relay"));
}
