//! Live streams between real `ferry up` processes on loopback (issue 10 item 5): one streamer
//! and four viewers. Three viewers join first (`ferry stream watch NAME`), the streamer waits for
//! them (`--wait-viewers 3`) and pipes 3 MiB of known bytes at 384 KiB/s
//! (`ferry stream publish NAME --rate …`, 256 KiB segments); each early viewer's stdout must
//! equal the input byte for byte (viewers that joined before the stream began get it from seq
//! 0). A fourth viewer joins by stream id after 3 segments: it gets a suffix of the input from a
//! segment boundary (at most the 30 s live window back; this stream is shorter, so it may get
//! all of it). Start-up delay and stalls are printed. Every daemon runs with `--no-default-bootstrap --no-lan --bind
//! 127.0.0.1`; processes are stopped by PID.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra, KillOnDrop};

/// Output of a child read on threads (so the child stays in its kill-on-drop guard).
fn collect(child: &mut std::process::Child) -> std::thread::JoinHandle<(Vec<u8>, String)> {
    let mut out = child.stdout.take().expect("stdout");
    let err = child.stderr.take();
    std::thread::spawn(move || {
        let e = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut err) = err {
                let _ = std::io::Read::read_to_string(&mut err, &mut s);
            }
            s
        });
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut b);
        (b, e.join().unwrap_or_default())
    })
}

/// Waits for a child's exit (≤ `limit`); returns its success.
fn wait(child: &mut std::process::Child, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s.success();
        }
        assert!(
            start.elapsed() < limit,
            "process still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

fn wait_capable(up: &FerryUp, n: u64) {
    let start = Instant::now();
    loop {
        let s = up
            .json(&["store", "status", "--json"])
            .expect("store status");
        if s["capable_nodes"].as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {s} capable"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cmd(up: &FerryUp, args: &[&str]) -> Command {
    let mut c = Command::new(ferry());
    c.arg("--profile").arg(up.profile()).args(args);
    c
}

#[test]
fn live_stream_reaches_four_viewers_byte_for_byte() {
    let infra = Infra::new(2).expect("infra");
    let nodes: Vec<FerryUp> = (0..5)
        .map(|_| FerryUp::start(ferry(), &infra.ferry_args()).expect("ferry up"))
        .collect();
    for n in &nodes {
        wait_capable(n, 2);
    }
    let input: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let mut publisher = cmd(
        &nodes[0],
        &[
            "stream",
            "publish",
            "cam",
            "--rate",
            "393216",
            "--wait-viewers",
            "3",
            "--linger",
            "8",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("publish");
    let mut stdin = publisher.stdin.take().expect("stdin");
    let mut publisher = KillOnDrop(publisher);
    let mut id_reader = std::io::BufReader::new(publisher.0.stdout.take().expect("stdout"));
    let mut id = String::new();
    std::io::BufRead::read_line(&mut id_reader, &mut id).expect("stream id");
    let id = id.trim().to_string();
    let mut pub_err = publisher.0.stderr.take().expect("stderr");
    let pub_log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pub_err, &mut s);
        s
    });
    assert_eq!(id.len(), 64, "{id}");
    // The announcement is in the DHT once publish printed the id; viewers retry the lookup
    // anyway (30 s).
    let mut viewers: Vec<KillOnDrop> = nodes[1..4]
        .iter()
        .map(|n| {
            KillOnDrop(
                cmd(n, &["stream", "watch", "cam", "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("watch"),
            )
        })
        .collect();
    let feeder = std::thread::spawn(move || {
        stdin.write_all(&input).expect("feed");
        drop(stdin);
        input
    });
    let mut readers: Vec<_> = viewers.iter_mut().map(|v| collect(&mut v.0)).collect();
    // A late joiner (by id) once the streamer pushed 3 segments: it gets the stream from near
    // the live edge, a suffix of the input starting at a segment boundary.
    let t = Instant::now();
    loop {
        let s = nodes[0]
            .json(&["stream", "status", &id])
            .expect("stream status");
        if s["segments"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "stream did not start: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut late = KillOnDrop(
        cmd(&nodes[4], &["stream", "watch", &id, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("late watch"),
    );
    readers.push(collect(&mut late.0));
    viewers.push(late);
    let mut outputs = Vec::new();
    for (v, r) in viewers.iter_mut().zip(readers) {
        let ok = wait(&mut v.0, Duration::from_secs(90));
        let (out, summary) = r.join().expect("reader");
        eprintln!("viewer: {} bytes; {summary}", out.len());
        assert!(ok, "viewer failed: {summary}");
        outputs.push((out, summary));
    }
    let input = feeder.join().expect("feeder");
    eprintln!("all viewers done after {:?}", started.elapsed());
    for (i, (out, summary)) in outputs.iter().enumerate() {
        if i == 3 {
            // The late joiner: a non-empty suffix of the input, from a segment boundary (all of
            // it when the whole stream so far was still in its buffer at play start).
            assert!(
                !out.is_empty() && out.len() <= input.len(),
                "late: {summary}"
            );
            let from = input.len() - out.len();
            assert_eq!(from % (256 << 10), 0, "late joiner starts mid-segment");
            assert!(
                out[..] == input[from..],
                "late joiner output differs: {summary}"
            );
        } else {
            assert_eq!(out.len(), input.len(), "viewer {i}: {summary}");
            assert!(out == &input, "viewer {i} output differs: {summary}");
        }
        let s: serde_json::Value =
            serde_json::from_str(summary.trim().lines().last().unwrap_or(""))
                .expect("summary json");
        assert_eq!(s["gaps"], 0, "{s}");
        assert!(s["startup_ms"].as_u64().is_some(), "{s}");
    }
    assert!(
        wait(&mut publisher.0, Duration::from_secs(30)),
        "publisher failed"
    );
    let log = pub_log.join().expect("publisher log");
    eprintln!("stream id {id}; publisher: {log}");
    let summary: serde_json::Value =
        serde_json::from_str(log.trim().lines().last().unwrap_or("")).expect("publisher json");
    let copies = summary["bytes_sent"].as_f64().unwrap_or(0.0) / input.len() as f64;
    eprintln!("streamer upload: {copies:.2} copies of the stream");
    assert!(copies <= 4.0, "streamer uploaded {copies:.2} copies");
    for n in nodes {
        n.stop().expect("stop");
    }
}
