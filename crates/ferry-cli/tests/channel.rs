//! Channels between real `ferry up` processes on loopback (issue 10 item 3). Every daemon runs
//! with `--no-default-bootstrap --no-lan --bind 127.0.0.1`, bootstraps from in-process
//! infrastructure nodes on 127.0.0.1 and holds the others' value-store items; processes are
//! stopped by PID (testkit).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(60);

/// Every loopback node is one source prefix to a holder: lift the per-source put rate.
const LOOPBACK_STORE: &str = "[store]\nputs_per_minute = 1000\nper_source_items = 1000\n";

fn start(infra: &Infra) -> FerryUp {
    let profile = FerryUp::profile_with_config(ferry(), LOOPBACK_STORE).expect("profile");
    FerryUp::start_with_profile(ferry(), profile, &infra.ferry_args()).expect("up")
}

fn wait_capable(up: &FerryUp, n: u64) {
    up.wait_store_capable(n, STEP).expect("store-capable peers");
}

/// Runs a CLI command until it succeeds; returns its JSON.
fn retry_json(up: &FerryUp, args: &[&str]) -> serde_json::Value {
    up.retry_json(args, STEP).expect("command")
}

/// The texts `up` reads in channel `id` (one sync).
fn read(up: &FerryUp, id: &str) -> Vec<String> {
    let out = up.cli(&["channel", "read", id, "--json"]).expect("read");
    assert!(
        out.status.success(),
        "read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            v["file_name"]
                .as_str()
                .map(|f| format!("file:{f}"))
                .unwrap_or_else(|| v["text"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Reads until `text` shows up.
fn wait_read(up: &FerryUp, id: &str, text: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let got = read(up, id);
        if got.iter().any(|t| t == text) {
            return got;
        }
        assert!(
            start.elapsed() < STEP,
            "{text:?} never arrived; have {got:?}: {}",
            up.stderr.snapshot().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(up: &FerryUp, id: &str) -> String {
    retry_json(up, &["channel", "members", id, "--json"])["info"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_status(up: &FerryUp, id: &str, want: &str) {
    let start = Instant::now();
    loop {
        let s = status(up, id);
        if s == want {
            return;
        }
        assert!(start.elapsed() < STEP, "status {s}, want {want}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Private channel: approved members read and post; a non-member can neither read nor post
/// (its post is dropped by members); a removed member cannot open posts made after its
/// removal and its later posts are dropped; a member whose process was stopped catches up
/// after restart. Public channel: joinable by id, only its admin posts.
#[test]
fn private_and_public_channels() {
    let t0 = Instant::now();
    let infra = Infra::new(2).expect("infra");
    let f = start(&infra); // founder
    let a = start(&infra); // member, goes offline
    let b = start(&infra); // member, removed
    let x = start(&infra); // outsider
    for n in [&f, &a, &b, &x] {
        wait_capable(n, 2);
    }
    eprintln!("4 nodes up and store-capable: {:?}", t0.elapsed());

    let c = retry_json(
        &f,
        &["channel", "create", "--private", "--name", "club", "--json"],
    );
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(
        (c["private"].as_bool(), c["status"].as_str()),
        (Some(true), Some("founder"))
    );

    let mut keys = Vec::new();
    for n in [&a, &b, &x] {
        let j = retry_json(n, &["channel", "join", &id, "--json"]);
        assert_eq!(j["status"], "pending", "{j}");
        assert_eq!(j["name"], "club");
        keys.push(j["member_key"].as_str().expect("key").to_string());
    }
    let (a_key, b_key) = (keys[0].clone(), keys[1].clone());
    // The founder collects the join requests (mail) and approves a and b, not x.
    for k in [&a_key, &b_key] {
        retry_json(&f, &["channel", "approve", &id, k, "--json"]);
    }
    let m = retry_json(&f, &["channel", "members", &id, "--json"]);
    let roles: Vec<(String, String)> = m["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|x| {
            (
                x["member_key"].as_str().unwrap_or_default().to_string(),
                x["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&(a_key.clone(), "member".into())), "{m}");
    assert!(roles.contains(&(keys[2].clone(), "pending".into())), "{m}");
    wait_status(&a, &id, "member");
    wait_status(&b, &id, "member");
    eprintln!("members approved: {:?}", t0.elapsed());

    // f and a are friends too: f's posts poke a over their session (live push).
    assert!(
        a.cli(&["set", "auto-accept", "on"])
            .expect("auto")
            .status
            .success()
    );
    let a_id = retry_json(&a, &["id", "--json"]);
    let a_pk = a_id["public_key"].as_str().expect("pk").to_string();
    let out = f
        .cli(&[
            "friend",
            "add",
            a_id["tox_id"].as_str().expect("tox id"),
            "hi",
        ])
        .expect("add");
    assert!(out.status.success());
    let start = Instant::now();
    while !retry_json(&f, &["friend", "list", "--json"])
        .as_array()
        .expect("friends")
        .iter()
        .any(|x| x["public_key"].as_str() == Some(&a_pk) && x["connection"] != "none")
    {
        assert!(start.elapsed() < STEP, "a never came online at f");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Posts reach members; members post too.
    let p = retry_json(&f, &["channel", "post", &id, "hello club", "--json"]);
    assert!(p["stored"].as_u64().unwrap_or(0) >= 1, "{p}");
    let start = Instant::now();
    while !a
        .stderr
        .snapshot()
        .iter()
        .any(|l| l.contains("channel poke"))
    {
        assert!(start.elapsed() < STEP, "a was not poked");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_read(&a, &id, "hello club");
    wait_read(&b, &id, "hello club");
    retry_json(&a, &["channel", "post", &id, "from a", "--json"]);
    wait_read(&f, &id, "from a");
    wait_read(&b, &id, "from a");
    // A small file inline; a big one is refused with a clear message.
    let small = f.profile().join("note.txt");
    std::fs::write(&small, b"inline file").expect("small");
    retry_json(
        &f,
        &[
            "channel",
            "post",
            &id,
            "--file",
            small.to_str().expect("path"),
            "--json",
        ],
    );
    let big = f.profile().join("big.bin");
    std::fs::write(&big, vec![7u8; 5000]).expect("big");
    let out = f
        .cli(&[
            "channel",
            "post",
            &id,
            "--file",
            big.to_str().expect("path"),
        ])
        .expect("big post");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ferry publish"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_read(&a, &id, "file:note.txt");

    // The outsider: cannot read (no epoch key) and cannot post.
    assert_eq!(status(&x, &id), "pending");
    assert!(read(&x, &id).is_empty(), "a non-member read posts");
    let out = x.cli(&["channel", "post", &id, "let me in"]).expect("post");
    assert!(!out.status.success(), "a non-member's post was accepted");
    retry_json(
        &x,
        &["channel", "post", &id, "spam", "--unchecked", "--json"],
    );
    eprintln!("posts exchanged: {:?}", t0.elapsed());

    // a goes offline; f posts; b is removed (key rotated); f posts again.
    let a_profile = a.stop_keep_profile().expect("stop a");
    retry_json(&f, &["channel", "post", &id, "while a was away", "--json"]);
    wait_read(&b, &id, "while a was away");
    let m = retry_json(&f, &["channel", "remove", &id, &b_key, "--json"]);
    assert_eq!(m["info"]["epoch"], 2, "{m}");
    assert!(
        m["removed"]
            .as_array()
            .expect("removed")
            .iter()
            .any(|r| r == &b_key),
        "{m}"
    );
    retry_json(&f, &["channel", "post", &id, "after removal", "--json"]);
    // b learns it was removed and cannot open the new post; its own later posts are dropped.
    wait_status(&b, &id, "removed");
    retry_json(
        &b,
        &[
            "channel",
            "post",
            &id,
            "b after removal",
            "--unchecked",
            "--json",
        ],
    );

    // a comes back and catches up (the posts made while it was away, the new epoch key).
    let a = FerryUp::start_with_profile(ferry(), a_profile, &infra.ferry_args()).expect("a");
    wait_capable(&a, 2);
    wait_read(&a, &id, "while a was away");
    let got = wait_read(&a, &id, "after removal");
    eprintln!("offline member caught up: {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    let got_f = read(&f, &id);
    let got_a = read(&a, &id);
    let got_b = read(&b, &id);
    for (who, got) in [("f", &got_f), ("a", &got_a), ("a'", &got)] {
        assert!(
            !got.iter().any(|t| t == "spam"),
            "{who} took x's post: {got:?}"
        );
        assert!(
            !got.iter().any(|t| t == "b after removal"),
            "{who} took the removed member's post: {got:?}"
        );
    }
    assert!(
        !got_b.iter().any(|t| t == "after removal"),
        "the removed member read a post of the new epoch: {got_b:?}"
    );
    assert!(got_b.iter().any(|t| t == "hello club"), "{got_b:?}");
    assert!(read(&x, &id).is_empty());

    // Public channel: anyone joins by id and reads; only the admin posts.
    let c = retry_json(&f, &["channel", "create", "--name", "news", "--json"]);
    let pid = c["id"].as_str().expect("id").to_string();
    retry_json(&f, &["channel", "post", &pid, "public hello", "--json"]);
    let j = retry_json(&x, &["channel", "join", &pid, "--json"]);
    assert_eq!(j["status"], "reader", "{j}");
    wait_read(&x, &pid, "public hello");
    let out = x.cli(&["channel", "post", &pid, "me too"]).expect("post");
    assert!(!out.status.success(), "a reader posted in a public channel");
    eprintln!("public channel read by id: {:?}", t0.elapsed());

    // The author goes offline too: a member coming back reads from the other holders.
    let a_profile = a.stop_keep_profile().expect("stop a");
    retry_json(&f, &["channel", "post", &id, "last words", "--json"]);
    assert!(f.stop().expect("stop f"));
    let a = FerryUp::start_with_profile(ferry(), a_profile, &infra.ferry_args()).expect("a");
    wait_capable(&a, 2);
    wait_read(&a, &id, "last words");
    eprintln!("caught up with the founder offline: {:?}", t0.elapsed());

    // Joined channels and history survive a restart.
    let x_profile = x.stop_keep_profile().expect("stop x");
    let x = FerryUp::start_with_profile(ferry(), x_profile, &infra.ferry_args()).expect("x");
    let out = x.cli(&["channel", "read", &pid, "--json"]).expect("read");
    assert!(String::from_utf8_lossy(&out.stdout).contains("public hello"));

    for n in [a, b, x] {
        assert!(n.stop().expect("stop"));
    }
    eprintln!("total: {:?}", t0.elapsed());
}
