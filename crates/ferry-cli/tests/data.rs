//! The DHT value store, offline messages and usernames between real `ferry up` processes on
//! loopback (issue 9). Every daemon runs with `--no-default-bootstrap --no-lan --bind 127.0.0.1`
//! and bootstraps from in-process infrastructure nodes on 127.0.0.1; processes are stopped by
//! PID (testkit).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(90);

/// A fresh profile (`ferry init`) whose config.toml holds `config`.
fn profile_with_config(config: &str) -> tempfile::TempDir {
    FerryUp::profile_with_config(ferry(), config).expect("profile")
}

/// Starts `ferry up` on a fresh profile whose config.toml holds `config`.
fn start_with_config(infra: &Infra, config: &str) -> FerryUp {
    FerryUp::start_with_profile(ferry(), profile_with_config(config), &infra.ferry_args())
        .expect("up")
}

/// Every loopback node is one source prefix to a holder: lift the per-source put rate.
const LOOPBACK_STORE: &str = "[store]\nputs_per_minute = 1000\nper_source_items = 1000\n";

fn public_key(up: &FerryUp) -> String {
    up.json(&["id", "--json"]).expect("id")["public_key"]
        .as_str()
        .expect("public_key")
        .to_string()
}

fn tox_id(up: &FerryUp) -> String {
    up.json(&["id", "--json"]).expect("id")["tox_id"]
        .as_str()
        .expect("tox_id")
        .to_string()
}

fn store_status(up: &FerryUp) -> serde_json::Value {
    up.json(&["store", "status", "--json"])
        .expect("store status")
}

/// Waits until `up` knows at least `n` store-capable peers.
fn wait_capable(up: &FerryUp, n: u64) {
    let start = Instant::now();
    loop {
        let s = store_status(up);
        if s["capable_nodes"].as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(
            start.elapsed() < STEP,
            "only {s} capable peers; close list {:?}: {}",
            up.json(&["dht", "nodes", "--json"]).ok(),
            up.stderr.snapshot().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a CLI command until it succeeds (the DHT may still be converging); returns its JSON.
fn retry_json(up: &FerryUp, args: &[&str]) -> serde_json::Value {
    up.retry_json(args, STEP).expect("command")
}

fn wait_online(up: &FerryUp, pk: &str) {
    let start = Instant::now();
    loop {
        let list = up.json(&["friend", "list", "--json"]).expect("friend list");
        if list.as_array().expect("array").iter().any(|f| {
            f["public_key"].as_str() == Some(pk) && f["connection"].as_str() != Some("none")
        }) {
            return;
        }
        assert!(start.elapsed() < STEP, "{pk} not online: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every message of `up`'s history with `pk`: (direction, text, delivered).
fn history(up: &FerryUp, pk: &str) -> Vec<(String, String, bool)> {
    let out = up.cli(&["messages", pk, "--json"]).expect("messages");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["direction"].as_str().unwrap_or_default().to_string(),
                v["text"].as_str().unwrap_or_default().to_string(),
                v["delivered"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn items_held(nodes: &[&FerryUp]) -> u64 {
    nodes
        .iter()
        .map(|n| store_status(n)["items"].as_u64().unwrap_or(0))
        .sum()
}

/// Immutable and mutable put/get across nodes; an older sequence number is refused; what a
/// node holds survives its restart (snapshot) and is reported against its quota.
#[test]
fn dht_put_get_and_store_survives_restart() {
    let infra = Infra::new(2).expect("infra");
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let b = FerryUp::start(ferry(), &infra.ferry_args()).expect("b");
    // c runs with a configured quota ([store] in config.toml).
    let mut c = start_with_config(&infra, "[store]\nquota_bytes = 200000\nmax_items = 500\n");
    for n in [&a, &b, &c] {
        wait_capable(n, 2);
    }
    let s = store_status(&a);
    assert_eq!(s["quota_bytes"], 8 << 20, "default quota: {s}");
    assert!(s["items"].is_u64() && s["bytes"].is_u64(), "{s}");
    let s = store_status(&c);
    assert_eq!(
        (s["quota_bytes"].as_u64(), s["max_items"].as_u64()),
        (Some(200_000), Some(500)),
        "configured quota: {s}"
    );

    let started = Instant::now();
    let put = retry_json(&a, &["dht", "put", "hello from a", "--json"]);
    let target = put["target"].as_str().expect("target").to_string();
    assert!(put["stored"].as_u64().unwrap_or(0) >= 1, "{put}");
    let got = retry_json(&b, &["dht", "get", &target, "--json"]);
    eprintln!("immutable put + get: {:?}", started.elapsed());
    assert_eq!(got["found"], true, "{got}");
    assert_eq!(got["value"], "hello from a");
    assert_eq!(got["kind"], "immutable");

    // Mutable: newer seq replaces, older seq is refused.
    let p1 = retry_json(
        &a,
        &["dht", "put", "v1", "--salt", "s", "--seq", "1", "--json"],
    );
    let mtarget = p1["target"].as_str().expect("target").to_string();
    let p2 = retry_json(
        &a,
        &["dht", "put", "v2", "--salt", "s", "--seq", "2", "--json"],
    );
    assert_eq!(p2["target"], p1["target"]);
    let got = retry_json(&c, &["dht", "get", &mtarget, "--json"]);
    assert_eq!(
        (got["value"].as_str(), got["seq"].as_u64()),
        (Some("v2"), Some(2)),
        "{got}"
    );
    let old = a
        .cli(&["dht", "put", "v0", "--salt", "s", "--seq", "1", "--json"])
        .expect("put");
    assert!(!old.status.success(), "an older seq must be refused");
    let got = retry_json(&b, &["dht", "get", &mtarget, "--json"]);
    assert_eq!(got["value"], "v2", "{got}");

    // Persistence: c holds items; after a kill -9 (the debounced snapshot is on disk) and a
    // restart it holds them again.
    let held = store_status(&c)["items"].as_u64().unwrap_or(0);
    assert!(held >= 2, "c holds {held} items");
    std::thread::sleep(Duration::from_secs(7));
    c.kill9().expect("kill c");
    assert!(c.profile().join("store.snap").exists());
    c.restart().expect("restart c");
    let after = store_status(&c)["items"].as_u64().unwrap_or(0);
    eprintln!("c held {held} items, {after} after kill -9 and restart");
    assert_eq!(after, held);
    assert!(a.stop().expect("a"));
    assert!(b.stop().expect("b"));
    assert!(c.stop().expect("c"));
}

/// A message to a friend whose process is stopped is sealed into its mailbox at other ferry
/// nodes; the friend gets it after it restarts (the sender being stopped too), exactly once, in
/// order; the sender sees the delivery receipt once both are up.
#[test]
fn offline_message_arrives_after_restart_exactly_once() {
    let infra = Infra::new(4).expect("infra");
    let c = start_with_config(&infra, LOOPBACK_STORE);
    let d = start_with_config(&infra, LOOPBACK_STORE);
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let b = FerryUp::start(ferry(), &infra.ferry_args()).expect("b");
    let out = b.cli(&["set", "auto-accept", "on"]).expect("auto-accept");
    assert!(out.status.success());
    let (a_pk, b_pk) = (public_key(&a), public_key(&b));
    let out = a.cli(&["friend", "add", &tox_id(&b), "hi"]).expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_online(&a, &b_pk);
    wait_online(&b, &a_pk);
    // Both learn the other is a ferry node (hello packets) before going offline.
    std::thread::sleep(Duration::from_secs(2));

    let mut b_profile = Some(b.stop_keep_profile().expect("stop b"));
    let mut a_profile = Some(a.stop_keep_profile().expect("stop a"));
    let rounds = 5;
    let mut times = Vec::new();
    for i in 0..rounds {
        let text = format!("offline {i}");
        // A comes up alone, sends to the offline B, and goes down once a holder has it.
        let a = FerryUp::start_with_profile(
            ferry(),
            a_profile.take().expect("a profile"),
            &infra.ferry_args(),
        )
        .expect("a");
        wait_capable(&a, 2);
        let before = items_held(&[&c, &d]);
        let out = a.cli(&["send", &b_pk, &text]).expect("send");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let start = Instant::now();
        while items_held(&[&c, &d]) <= before {
            assert!(
                start.elapsed() < STEP,
                "no holder took the mail: {}",
                a.stderr.snapshot().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        a_profile = Some(a.stop_keep_profile().expect("stop a"));
        // B comes back and reads it.
        let restarted = Instant::now();
        let b = FerryUp::start_with_profile(
            ferry(),
            b_profile.take().expect("b profile"),
            &infra.ferry_args(),
        )
        .expect("b");
        loop {
            if history(&b, &a_pk)
                .iter()
                .any(|(d, t, _)| d == "in" && *t == text)
            {
                break;
            }
            assert!(
                restarted.elapsed() < STEP,
                "{text:?} never arrived: {}",
                b.stderr.snapshot().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = restarted.elapsed();
        eprintln!("round {i}: delivered {t:?} after B's restart");
        if std::env::var_os("FERRY_TEST_LOGS").is_some() {
            eprintln!("{}", b.stderr.snapshot().join("\n"));
        }
        times.push(t);
        b_profile = Some(b.stop_keep_profile().expect("stop b"));
    }
    times.sort();
    eprintln!(
        "offline delivery after restart: median {:?} (min {:?}, max {:?}, {} rounds)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        rounds
    );

    // Both up: exactly once, in order, and A gets the receipts.
    let a = FerryUp::start_with_profile(
        ferry(),
        a_profile.take().expect("a profile"),
        &infra.ferry_args(),
    )
    .expect("a");
    let b = FerryUp::start_with_profile(
        ferry(),
        b_profile.take().expect("b profile"),
        &infra.ferry_args(),
    )
    .expect("b");
    wait_online(&a, &b_pk);
    let start = Instant::now();
    loop {
        let h = history(&a, &b_pk);
        let out: Vec<&(String, String, bool)> = h
            .iter()
            .filter(|(d, t, _)| d == "out" && t.starts_with("offline"))
            .collect();
        if out.len() == rounds && out.iter().all(|m| m.2) {
            break;
        }
        assert!(start.elapsed() < STEP, "receipts missing: {h:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let got: Vec<String> = history(&b, &a_pk)
        .into_iter()
        .filter(|(d, t, _)| d == "in" && t.starts_with("offline"))
        .map(|(_, t, _)| t)
        .collect();
    let want: Vec<String> = (0..rounds).map(|i| format!("offline {i}")).collect();
    assert_eq!(got, want, "exactly once, in order");
    for n in [a, b, c, d] {
        assert!(n.stop().expect("stop"));
    }
}

/// A registered name resolves to its owner's Tox ID from another node; a second user cannot
/// take it; `ferry friend add @NAME` reaches the owner.
#[test]
fn names_first_claim_wins_and_resolve() {
    let infra = Infra::new(4).expect("infra");
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let b = FerryUp::start(ferry(), &infra.ferry_args()).expect("b");
    let c = FerryUp::start(ferry(), &infra.ferry_args()).expect("c");
    for n in [&a, &b, &c] {
        wait_capable(n, 2);
    }
    let started = Instant::now();
    let reg = retry_json(&a, &["name", "register", "alice", "--json"]);
    eprintln!("register (with proof of work): {:?}", started.elapsed());
    assert_eq!(reg["tox_id"], tox_id(&a), "{reg}");
    let started = Instant::now();
    let r = retry_json(&b, &["name", "resolve", "@Alice", "--json"]);
    eprintln!("resolve: {:?}", started.elapsed());
    assert_eq!(r["name"], "alice");
    assert_eq!(r["tox_id"], tox_id(&a), "{r}");
    assert_eq!(r["fingerprint"], reg["fingerprint"]);

    let out = b.cli(&["name", "register", "alice", "--json"]).expect("b");
    assert!(!out.status.success(), "b must not take alice");
    let r = retry_json(&c, &["name", "resolve", "alice", "--json"]);
    assert_eq!(r["tox_id"], tox_id(&a), "still a's: {r}");

    let out = b.cli(&["friend", "add", "@alice", "--json"]).expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        f["public_key"].as_str().map(str::to_ascii_uppercase),
        Some(public_key(&a).to_ascii_uppercase())
    );
    let out = a.cli(&["name", "resolve", "nobody-has-this"]).expect("r");
    assert!(!out.status.success());
    for n in [a, b, c] {
        assert!(n.stop().expect("stop"));
    }
}

/// A friend request to a user whose process is stopped is left in its request mailbox; the
/// user sees it after it restarts, the sender being stopped by then.
#[test]
fn friend_request_reaches_offline_user_via_request_mailbox() {
    let infra = Infra::new(2).expect("infra");
    let c = FerryUp::start(ferry(), &infra.ferry_args()).expect("c");
    let d = FerryUp::start(ferry(), &infra.ferry_args()).expect("d");
    let b = FerryUp::start(ferry(), &infra.ferry_args()).expect("b");
    let b_id = tox_id(&b);
    let b_profile = b.stop_keep_profile().expect("stop b");
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let a_pk = public_key(&a);
    wait_capable(&a, 2);
    let before = items_held(&[&c, &d]);
    let out = a
        .cli(&["friend", "add", &b_id, "hello while you sleep"])
        .expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while items_held(&[&c, &d]) <= before {
        assert!(start.elapsed() < STEP, "no holder took the request");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.stop().expect("stop a"));
    let restarted = Instant::now();
    let b = FerryUp::start_with_profile(ferry(), b_profile, &infra.ferry_args()).expect("b");
    loop {
        let rs = b.json(&["friend", "requests", "--json"]).expect("requests");
        if rs.as_array().expect("array").iter().any(|r| {
            r["public_key"].as_str() == Some(a_pk.as_str())
                && r["message"].as_str() == Some("hello while you sleep")
        }) {
            break;
        }
        assert!(
            restarted.elapsed() < STEP,
            "request never arrived: {rs}\n{}",
            b.stderr.snapshot().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "offline friend request seen {:?} after the recipient's restart",
        restarted.elapsed()
    );
    for n in [b, c, d] {
        assert!(n.stop().expect("stop"));
    }
}

/// A raw store client on loopback talks to a running node: a mutable item with a bad signature
/// and one with an older sequence number are refused; a valid newer one is stored.
#[test]
fn forged_and_stale_mutable_items_are_refused() {
    use ferry_crypto::rng::FerryRng;
    use ferry_crypto::{KeyPair, PrecomputedCache};
    use ferry_data::host::StoreHost;
    use ferry_data::item::{Item, MutableItem};
    use ferry_data::store::{Store, StoreConfig};
    use ferry_data::wire::{GetRequest, PutRequest, StoreMessage};

    let infra = Infra::new(1).expect("infra");
    let c = FerryUp::start(ferry(), &infra.ferry_args()).expect("c");
    let st = c.json(&["status", "--json"]).expect("status");
    let c_key =
        ferry_crypto::PublicKey::from_hex(st["dht_public_key"].as_str().expect("key")).expect("pk");
    let c_addr: std::net::SocketAddr = format!("127.0.0.1:{}", st["udp_port"])
        .parse()
        .expect("addr");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rng = FerryRng::from_u64(9);
    let me = KeyPair::generate(&mut rng);
    let now = Instant::now();
    let mut host = StoreHost::new(
        me.public,
        Store::new(me.public, StoreConfig::default(), now, &mut rng),
        PrecomputedCache::new(me.secret.clone(), 4),
    );
    let ask = |msg: StoreMessage, host: &mut StoreHost, rng: &mut FerryRng| -> StoreMessage {
        let dg = host.seal(&c_key, &msg, rng).expect("seal");
        sock.send_to(&dg, c_addr).expect("send");
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = sock.recv_from(&mut buf).expect("reply");
            // The node also sends its own requests (probes, mailbox gets): skip them.
            if let Some(h) = host.handle_datagram(Instant::now(), from, &buf[..n], rng)
                && matches!(
                    h.message,
                    StoreMessage::GetResponse(_) | StoreMessage::PutResponse(_)
                )
                && h.message.request_id() == msg.request_id()
            {
                return h.message;
            }
        }
    };
    let owner = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let good = MutableItem::sign(&owner, b"salt", 5, b"five");
    let target = good.target();
    let StoreMessage::GetResponse(g) = ask(
        StoreMessage::Get(GetRequest {
            request_id: [1; 8],
            target,
            seq: None,
        }),
        &mut host,
        &mut rng,
    ) else {
        panic!("get response");
    };
    let put = |item: MutableItem, id: u8| {
        StoreMessage::Put(PutRequest {
            request_id: [id; 8],
            token: g.token,
            ttl_s: 60,
            cas: None,
            target,
            item: Item::Mutable(item),
        })
    };
    let result = |m: StoreMessage| match m {
        StoreMessage::PutResponse(p) => p.result,
        other => panic!("not a put response: {other:?}"),
    };
    let mut forged = MutableItem::sign(&owner, b"salt", 6, b"six");
    forged.value = b"evil".to_vec();
    let r = result(ask(put(forged, 2), &mut host, &mut rng));
    assert!(r.is_err(), "bad signature accepted: {r:?}");
    let r = result(ask(put(good, 3), &mut host, &mut rng));
    assert!(r.is_ok(), "valid item refused: {r:?}");
    let stale = MutableItem::sign(&owner, b"salt", 4, b"four");
    let r = result(ask(put(stale, 4), &mut host, &mut rng));
    assert!(r.is_err(), "older seq accepted: {r:?}");
    let s = store_status(&c);
    assert_eq!(s["items"], 1, "{s}");
    assert!(s["puts_refused"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert!(c.stop().expect("stop"));
}

/// Quota overflow from one source does not evict others' items (`data-layer.md` §3.1 fair
/// share): holder H holds at most 12 items; V (source 127.0.2.0/24) stores 3 items, then F
/// (source 127.0.3.0/24) floods 40. H refuses or evicts only F's items: with V and F stopped,
/// H still holds every one of V's items.
#[test]
fn flood_from_one_source_does_not_evict_others_items() {
    let infra = Infra::new(2).expect("infra");
    let h = start_with_config(
        &infra,
        "[store]\nmax_items = 12\nper_source_items = 1000\nputs_per_minute = 1000\n",
    );
    let v = FerryUp::start_bound(
        ferry(),
        profile_with_config(LOOPBACK_STORE),
        std::net::Ipv4Addr::new(127, 0, 2, 1),
        &infra.ferry_args(),
    )
    .expect("v");
    let f = FerryUp::start_bound(
        ferry(),
        profile_with_config(LOOPBACK_STORE),
        std::net::Ipv4Addr::new(127, 0, 3, 1),
        &infra.ferry_args(),
    )
    .expect("f");
    for n in [&h, &v, &f] {
        wait_capable(n, 2);
    }
    let mine: Vec<String> = (0..3)
        .map(|i| {
            let put = retry_json(&v, &["dht", "put", &format!("victim item {i}"), "--json"]);
            put["target"].as_str().expect("target").to_string()
        })
        .collect();
    let start = Instant::now();
    while store_status(&h)["items"].as_u64().unwrap_or(0) < 3 {
        assert!(start.elapsed() < STEP, "h never took v's items");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    for i in 0..40 {
        // Some of these are refused by H (and by V's per-source rate): only H's state matters.
        let _ = f.cli(&["dht", "put", &format!("flood item {i}"), "--json"]);
    }
    let s = store_status(&h);
    eprintln!("flood of 40 puts took {:?}; holder: {s}", started.elapsed());
    assert!(
        s["items"].as_u64().unwrap_or(99) <= 12,
        "over the item cap: {s}"
    );
    assert!(
        s["puts_refused"].as_u64().unwrap_or(0) + s["evicted"].as_u64().unwrap_or(0) > 0,
        "the flood never reached the cap: {s}"
    );
    assert!(v.stop().expect("stop v"));
    assert!(f.stop().expect("stop f"));
    // With V and F stopped, H's own `dht get` can only find V's items in H's store. (Soon:
    // H is young, so it granted the items a short lifetime, and their owner is gone.)
    for (i, target) in mine.iter().enumerate() {
        let got = retry_json(&h, &["dht", "get", target, "--json"]);
        assert_eq!(
            got["found"],
            true,
            "v's item {i} lost: {got}; holder {}",
            store_status(&h)
        );
        assert_eq!(got["value"], format!("victim item {i}"));
    }
    assert!(h.stop().expect("stop h"));
}

/// `ferry devnet --data` (issue 9 item 5): a name registered and resolved, a message to an
/// offline friend read after the friend's process restarts, exactly once, with a receipt.
#[test]
fn devnet_data_shows_names_and_offline_mail() {
    let out = std::process::Command::new(ferry())
        .args(["devnet", "--data", "--nodes", "5", "--json"])
        .output()
        .expect("devnet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    eprintln!("{r}");
    assert_eq!(r["holders"], 3);
    assert_eq!(r["resolved_tox_id_ok"], true, "{r}");
    assert!(r["mailed_after_s"].as_f64().is_some(), "{r}");
    assert!(r["delivered_after_restart_ms"].as_u64().is_some(), "{r}");
    assert_eq!(r["exactly_once"], true, "{r}");
    assert_eq!(r["receipt"], true, "{r}");
    assert!(stderr.contains("torn down"), "{stderr}");
}
