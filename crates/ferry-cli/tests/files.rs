//! File transfer end to end (issue 6): real `ferry up` processes and c-toxcore 0.2.18 clients
//! (`toxpeer`) on loopback. Content is compared by BLAKE3 (ferry reports the hash of what it
//! wrote; the test hashes the files itself too). Nothing leaves 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra, ToxClient, ToxClientOptions};
use serde_json::Value;

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(120);

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

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_online(up: &FerryUp, pk: &str) {
    let start = Instant::now();
    loop {
        let list = up.json(&["friend", "list", "--json"]).expect("friend list");
        if list.as_array().expect("array").iter().any(|f| {
            f["public_key"].as_str().map(str::to_ascii_uppercase) == Some(pk.to_ascii_uppercase())
                && f["connection"].as_str() != Some("none")
        }) {
            return;
        }
        assert!(start.elapsed() < STEP, "friend {pk} not online: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files(up: &FerryUp) -> Vec<Value> {
    up.json(&["file", "list", "--json"])
        .expect("file list")
        .as_array()
        .expect("array")
        .clone()
}

/// Polls `ferry file list` until a transfer matches `pred`; returns it.
fn wait_file(up: &FerryUp, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let list = files(up);
        if let Some(v) = list.iter().find(|v| pred(v)) {
            return v.clone();
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}: {list:#?}\n{}",
            up.stderr.snapshot().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn make_file(dir: &Path, name: &str, len: usize, seed: u32) -> PathBuf {
    let data: Vec<u8> = (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed).to_be_bytes()[1])
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p
}

fn blake3_of(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).expect("read"))
        .to_hex()
        .to_string()
}

/// Two ferry daemons that are friends (b auto-accepts a's request).
fn ferry_pair(infra: &Infra) -> (FerryUp, FerryUp, String, String) {
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let b = FerryUp::start(ferry(), &infra.ferry_args()).expect("b");
    ok(&b.cli(&["set", "auto-accept", "on"]).expect("auto-accept"));
    let (a_pk, b_pk) = (public_key(&a), public_key(&b));
    ok(&a
        .cli(&["friend", "add", &tox_id(&b), "files"])
        .expect("add"));
    wait_online(&a, &b_pk);
    wait_online(&b, &a_pk);
    (a, b, a_pk, b_pk)
}

fn id_of(v: &Value) -> String {
    v["id"].as_u64().expect("id").to_string()
}

/// ferry -> ferry: one file with a measured rate; pause/resume from the receiver; cancel from
/// the sender; 20 concurrent files into an auto-accept directory.
#[test]
fn ferry_to_ferry_pause_resume_cancel_and_20_concurrent() {
    let infra = Infra::new(6).expect("infra");
    let (a, b, a_pk, b_pk) = ferry_pair(&infra);
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("inbox");

    // One file, accepted by hand; measured.
    let src = make_file(dir.path(), "one.bin", 8 << 20, 1);
    let sent = a
        .json(&["file", "send", &b_pk, src.to_str().expect("utf8"), "--json"])
        .expect("send");
    assert_eq!(sent["state"], "waiting");
    assert_eq!(sent["hash"].as_str(), Some(blake3_of(&src).as_str()));
    let offer = wait_file(&b, "offer", STEP, |v| {
        v["direction"] == "in" && v["state"] == "offered" && v["name"] == "one.bin"
    });
    assert_eq!(offer["file_id"], sent["file_id"]);
    assert_eq!(
        offer["friend"].as_str().map(str::to_ascii_uppercase),
        Some(a_pk.to_ascii_uppercase())
    );
    let started = Instant::now();
    ok(&b
        .cli(&[
            "file",
            "accept",
            &id_of(&offer),
            "--to",
            inbox.to_str().expect("utf8"),
            "--json",
        ])
        .expect("accept"));
    // A chat message while the file flows: net_crypto delivers it in order after the file data
    // queued before it, so the file window bounds its delay.
    wait_file(&b, "bytes flowing", STEP, |v| {
        v["id"] == offer["id"] && v["bytes_done"].as_u64().unwrap_or(0) > (1 << 20)
    });
    let t0 = Instant::now();
    ok(&a
        .cli(&["send", &b_pk, "chat during a transfer"])
        .expect("send"));
    loop {
        let out = b.cli(&["messages", &a_pk, "--json"]).expect("messages");
        if String::from_utf8_lossy(&out.stdout).contains("chat during a transfer") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "chat stuck behind the file"
        );
    }
    eprintln!(
        "chat message during the transfer arrived within {:?} (incl. two CLI round trips)",
        t0.elapsed()
    );
    let done = wait_file(&b, "one.bin done", STEP, |v| {
        v["id"] == offer["id"] && v["state"] == "done"
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "ferry -> ferry: 8 MiB in {secs:.2} s = {:.2} MiB/s (debug build)",
        8.0 / secs
    );
    assert_eq!(done["hash"], sent["hash"], "{done}");
    assert_eq!(
        blake3_of(Path::new(done["path"].as_str().expect("path"))),
        blake3_of(&src)
    );
    wait_file(&a, "sender done", STEP, |v| {
        v["id"] == sent["id"] && v["state"] == "done"
    });

    // Pause / resume from the receiver.
    let src2 = make_file(dir.path(), "two.bin", 24 << 20, 2);
    let sent2 = a
        .json(&[
            "file",
            "send",
            &b_pk,
            src2.to_str().expect("utf8"),
            "--json",
        ])
        .expect("send");
    let offer2 = wait_file(&b, "offer 2", STEP, |v| {
        v["name"] == "two.bin" && v["state"] == "offered"
    });
    ok(&b
        .cli(&[
            "file",
            "accept",
            &id_of(&offer2),
            "--to",
            inbox.to_str().expect("utf8"),
            "--json",
        ])
        .expect("accept"));
    wait_file(&b, "some bytes", STEP, |v| {
        v["id"] == offer2["id"] && v["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    let p = b
        .json(&["file", "pause", &id_of(&offer2), "--json"])
        .expect("pause");
    assert_eq!(p["state"], "paused", "{p}");
    wait_file(&a, "sender sees pause", STEP, |v| {
        v["id"] == sent2["id"] && v["state"] == "paused"
    });
    // What net_crypto had queued drains; then nothing more arrives.
    std::thread::sleep(Duration::from_secs(3));
    let before = wait_file(&b, "paused", STEP, |v| v["id"] == offer2["id"])["bytes_done"].clone();
    std::thread::sleep(Duration::from_secs(2));
    let after = wait_file(&b, "paused", STEP, |v| v["id"] == offer2["id"]);
    assert_eq!(after["bytes_done"], before, "no progress while paused");
    assert_ne!(after["state"], "done");
    let r = b
        .json(&["file", "resume", &id_of(&offer2), "--json"])
        .expect("resume");
    assert_eq!(r["state"], "active", "{r}");
    let done2 = wait_file(&b, "two.bin done", STEP * 2, |v| {
        v["id"] == offer2["id"] && v["state"] == "done"
    });
    assert_eq!(done2["hash"].as_str(), Some(blake3_of(&src2).as_str()));

    // Cancel from the sender.
    let src3 = make_file(dir.path(), "three.bin", 32 << 20, 3);
    let sent3 = a
        .json(&[
            "file",
            "send",
            &b_pk,
            src3.to_str().expect("utf8"),
            "--json",
        ])
        .expect("send");
    let offer3 = wait_file(&b, "offer 3", STEP, |v| {
        v["name"] == "three.bin" && v["state"] == "offered"
    });
    ok(&b
        .cli(&[
            "file",
            "accept",
            &id_of(&offer3),
            "--to",
            inbox.to_str().expect("utf8"),
            "--json",
        ])
        .expect("accept"));
    wait_file(&b, "bytes", STEP, |v| {
        v["id"] == offer3["id"] && v["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    let c = a
        .json(&["file", "cancel", &id_of(&sent3), "--json"])
        .expect("cancel");
    assert_eq!(c["state"], "cancelled");
    let gone = wait_file(&b, "receiver sees cancel", STEP, |v| {
        v["id"] == offer3["id"] && v["state"] == "cancelled"
    });
    assert!(gone["hash"].is_null());

    // 20 at once into the auto-accept directory.
    let auto = dir.path().join("auto");
    ok(&b
        .cli(&["set", "auto-accept-files", auto.to_str().expect("utf8")])
        .expect("auto-accept-files"));
    let mut expect = Vec::new();
    for k in 0..20 {
        let p = make_file(
            dir.path(),
            &format!("many-{k}.bin"),
            50_000 + k * 37_000,
            10 + k as u32,
        );
        let s = a
            .json(&["file", "send", &b_pk, p.to_str().expect("utf8"), "--json"])
            .expect("send");
        expect.push((s["file_id"].clone(), blake3_of(&p)));
    }
    let start = Instant::now();
    loop {
        let list = files(&b);
        let done = expect
            .iter()
            .filter(|(fid, hash)| {
                list.iter().any(|v| {
                    v["file_id"] == *fid && v["state"] == "done" && v["hash"].as_str() == Some(hash)
                })
            })
            .count();
        if done == 20 {
            break;
        }
        assert!(start.elapsed() < STEP * 2, "{done}/20 done: {list:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Avatars: a sets one; b stores it under its profile.
    let img = make_file(dir.path(), "me.png", 20_000, 99);
    ok(&a
        .cli(&["file", "avatar", img.to_str().expect("utf8")])
        .expect("avatar"));
    let want = std::fs::read(&img).expect("read");
    let start = Instant::now();
    loop {
        let got = std::fs::read_dir(b.profile().join("avatars"))
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(&a_pk))
            .and_then(|e| std::fs::read(e.path()).ok());
        if got.as_deref() == Some(&want[..]) {
            break;
        }
        assert!(start.elapsed() < STEP, "avatar never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.stop().expect("stop a"));
    assert!(b.stop().expect("stop b"));
}

/// kill -9 of the receiver mid-file: after restart the sender offers the same file id again,
/// the receiver seeks to the prefix it kept, and the result hashes equal. Then the same with
/// kill -9 of the sender (its records survive; it offers the file again when the friend is
/// back).
#[test]
fn kill_9_of_receiver_or_sender_resumes_by_seek() {
    let infra = Infra::new(6).expect("infra");
    let (a, mut b, _a_pk, b_pk) = ferry_pair(&infra);
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("inbox");
    ok(&b
        .cli(&["set", "auto-accept-files", inbox.to_str().expect("utf8")])
        .expect("auto-accept-files"));
    let src = make_file(dir.path(), "big.bin", 48 << 20, 7);
    let sent = a
        .json(&["file", "send", &b_pk, src.to_str().expect("utf8"), "--json"])
        .expect("send");
    let part = wait_file(&b, "partial", STEP, |v| {
        v["file_id"] == sent["file_id"] && v["bytes_done"].as_u64().unwrap_or(0) > (1 << 20)
    });
    let before = part["bytes_done"].as_u64().expect("bytes");
    assert_ne!(
        part["state"], "done",
        "file finished before the kill; make it larger"
    );
    b.kill9().expect("kill -9");
    b.restart().expect("restart");
    let done = wait_file(&b, "resumed and done", STEP * 3, |v| {
        v["file_id"] == sent["file_id"] && v["state"] == "done"
    });
    assert_eq!(done["id"], part["id"], "same record resumed");
    assert_eq!(done["hash"].as_str(), Some(blake3_of(&src).as_str()));
    assert_eq!(
        blake3_of(Path::new(done["path"].as_str().expect("path"))),
        blake3_of(&src)
    );
    let log = b.stderr.snapshot().join("\n");
    assert!(
        log.contains("resuming incoming file"),
        "no resume in the log:\n{log}"
    );
    eprintln!("resumed after kill -9 of the receiver with {before} bytes kept");

    // kill -9 of the sender: after its restart it offers the file again by itself.
    let mut a = a;
    let src2 = make_file(dir.path(), "big2.bin", 48 << 20, 8);
    let sent2 = a
        .json(&[
            "file",
            "send",
            &b_pk,
            src2.to_str().expect("utf8"),
            "--json",
        ])
        .expect("send");
    let part2 = wait_file(&b, "partial 2", STEP, |v| {
        v["file_id"] == sent2["file_id"] && v["bytes_done"].as_u64().unwrap_or(0) > (1 << 20)
    });
    assert_ne!(part2["state"], "done");
    a.kill9().expect("kill -9 sender");
    a.restart().expect("restart sender");
    let done2 = wait_file(&b, "resumed after sender restart", STEP * 3, |v| {
        v["file_id"] == sent2["file_id"] && v["state"] == "done"
    });
    assert_eq!(done2["id"], part2["id"], "same record resumed");
    assert_eq!(done2["hash"].as_str(), Some(blake3_of(&src2).as_str()));
    wait_file(&a, "sender record done", STEP, |v| {
        v["id"] == sent2["id"] && v["state"] == "done"
    });
    assert!(a.stop().expect("stop a"));
    assert!(b.stop().expect("stop b"));
}

fn tox_client(infra: &Infra) -> ToxClient {
    ToxClient::spawn(&ToxClientOptions {
        port: ferry_testkit::free_udp_port(),
        bootstrap: infra.tox_bootstrap(),
        auto_accept: true,
        iterate_ms: Some(1),
        seconds: Some(400),
        ..ToxClientOptions::default()
    })
    .expect("toxpeer")
}

/// ferry <-> c-toxcore both ways, content hashes equal.
#[test]
fn files_both_ways_with_c_toxcore() {
    let infra = Infra::new(6).expect("infra");
    let up = FerryUp::start(ferry(), &infra.ferry_args()).expect("ferry up");
    let mut tox = tox_client(&infra);
    let dir = tempfile::tempdir().expect("tempdir");
    let tox_dir = dir.path().join("tox");
    std::fs::create_dir_all(&tox_dir).expect("mkdir");
    tox.request(&format!("FILE_DIR {}", tox_dir.display()), "OK")
        .expect("dir");
    tox.request("FILE_AUTO 1", "OK").expect("auto");
    ok(&up
        .cli(&["friend", "add", &tox.address, "files?"])
        .expect("add"));
    let tox_pk = tox.public_key().to_string();
    wait_online(&up, &tox_pk);
    tox.wait_for("FRIEND_CONNECTION 0 ", STEP)
        .expect("tox sees ferry");

    // ferry -> c-toxcore.
    let src = make_file(dir.path(), "to-tox.bin", 4 << 20, 21);
    let started = Instant::now();
    let sent = up
        .json(&[
            "file",
            "send",
            &tox_pk,
            src.to_str().expect("utf8"),
            "--json",
        ])
        .expect("send");
    let line = match tox.wait_for("FILE_DONE ", STEP) {
        Ok(line) => line,
        Err(e) => panic!(
            "c-toxcore got the file: {e:#}\nferry's transfers: {:#?}\nferry status: {}\nferry stderr:\n{}",
            files(&up),
            up.json(&["status", "--json"]).unwrap_or_default(),
            up.stderr.snapshot().join("\n")
        ),
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "ferry -> c-toxcore: 4 MiB in {secs:.2} s = {:.2} MiB/s",
        4.0 / secs
    );
    let path = line.split(' ').nth(4).expect("path");
    assert_eq!(blake3_of(Path::new(path)), blake3_of(&src), "{line}");
    wait_file(&up, "sender done", STEP, |v| {
        v["id"] == sent["id"] && v["state"] == "done"
    });

    // c-toxcore -> ferry.
    let inbox = dir.path().join("inbox");
    ok(&up
        .cli(&["set", "auto-accept-files", inbox.to_str().expect("utf8")])
        .expect("auto-accept-files"));
    let src2 = make_file(dir.path(), "from-tox.bin", 4 << 20, 22);
    let started = Instant::now();
    tox.request(&format!("FILE_SEND 0 {}", src2.display()), "FILE_SENDING")
        .expect("tox send");
    let done = wait_file(&up, "from c-toxcore", STEP, |v| {
        v["direction"] == "in" && v["name"] == "from-tox.bin" && v["state"] == "done"
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "c-toxcore -> ferry: 4 MiB in {secs:.2} s = {:.2} MiB/s",
        4.0 / secs
    );
    assert_eq!(done["hash"].as_str(), Some(blake3_of(&src2).as_str()));
    tox.wait_for("FILE_SENT ", STEP)
        .expect("c-toxcore sees it delivered");
    assert!(up.stop().expect("stop"));
}
