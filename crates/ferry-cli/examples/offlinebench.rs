//! Offline message delivery benchmark driver for `bench/offline.sh` (issue 9 goal: "offline
//! message delivery time after the recipient returns: median under 5 s on loopback").
//!
//! ```text
//! offlinebench --ferry BIN [--rounds 10] [--storers 8] [--infra 2] [--sender up|down]
//!              [--stop api|kill] [--cold] [--no-wait]
//! ```
//! `--stop api` stops B with `ferry stop` (it tells its store peers goodbye and saves them to
//! `mail.json`, probed first at the next start); `--stop kill` kills it with SIGKILL by PID (no
//! goodbye; restarted on the same port). `--cold` also empties the saved peers of B's
//! `mail.json` before each restart, so B finds store peers only through the DHT (as after a
//! first start or when every saved peer is gone). `--no-wait` (with `--sender up --stop
//! kill`): A sends at once, before it has noticed B is gone, so the message goes into the dead
//! session and B is back before A's session times out; `path=session` is a message that came
//! through neither the mailbox nor the mail layer's direct resend (net_crypto's own resend on
//! the new session).
//! Starts `--infra` in-process DHT nodes and `--storers` `ferry up` daemons (store holders) on
//! 127.0.0.1, then sender A and recipient B, makes them friends and waits until each knows the
//! other is a ferry node. Each round: B is stopped; A sends a message with `ferry send`; once A
//! logs that a holder stored it (`offline message stored`), A is stopped too with
//! `--sender down` (only the mailbox can deliver) or stays up with `--sender up` (the mailbox and
//! A's direct resend race); B is restarted and polled with `ferry messages --json` until the
//! message shows. Prints one `ROUND` line per round (times from B's process start, from B's
//! first store-capable peer, and which path delivered it, read from B's log) and a `SUMMARY`
//! (median, p90, max). At the end, with both up, checks that B holds every message exactly once
//! and in order. Processes are killed by PID; every wait is bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferry_testkit::{FerryUp, Infra};

/// Longest wait of any one step (a message not delivered by then fails the run).
const STEP: Duration = Duration::from_secs(60);
/// Most rounds accepted.
const MAX_ROUNDS: usize = 100;
/// Every loopback node is one source prefix to a holder: lift the per-source put rate.
const LOOPBACK_STORE: &str = "[store]\nputs_per_minute = 1000\nper_source_items = 1000\n";

struct Args {
    ferry: PathBuf,
    rounds: usize,
    storers: usize,
    infra: usize,
    sender_up: bool,
    kill: bool,
    cold: bool,
    no_wait: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        ferry: PathBuf::new(),
        rounds: 10,
        storers: 8,
        infra: 2,
        sender_up: false,
        kill: false,
        cold: false,
        no_wait: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--cold" {
            a.cold = true;
            continue;
        }
        if k == "--no-wait" {
            a.no_wait = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--ferry" => a.ferry = PathBuf::from(v),
            "--rounds" => a.rounds = v.parse()?,
            "--storers" => a.storers = v.parse()?,
            "--infra" => a.infra = v.parse()?,
            "--sender" => a.sender_up = v == "up",
            "--stop" => a.kill = v == "kill",
            _ => bail!("unknown argument {k}"),
        }
    }
    ensure!(
        (1..=MAX_ROUNDS).contains(&a.rounds),
        "--rounds must be 1..={MAX_ROUNDS}"
    );
    ensure!((1..=32).contains(&a.storers), "--storers must be 1..=32");
    ensure!((1..=8).contains(&a.infra), "--infra must be 1..=8");
    ensure!(a.ferry.is_file(), "--ferry {:?} is not a file", a.ferry);
    Ok(a)
}

fn public_key(up: &FerryUp) -> anyhow::Result<String> {
    Ok(up.json(&["id", "--json"])?["public_key"]
        .as_str()
        .context("public_key")?
        .to_string())
}

fn tox_id(up: &FerryUp) -> anyhow::Result<String> {
    Ok(up.json(&["id", "--json"])?["tox_id"]
        .as_str()
        .context("tox_id")?
        .to_string())
}

/// Incoming texts of `up`'s history with `pk`, in history order.
fn incoming(up: &FerryUp, pk: &str) -> anyhow::Result<Vec<String>> {
    let out = up.cli(&["messages", pk, "--json"])?;
    ensure!(out.status.success(), "ferry messages failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["direction"] == "in")
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect())
}

/// Waits until `up` sees friend `pk` online (`online`) or offline (`!online`).
fn wait_connection(up: &FerryUp, pk: &str, online: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let list = up.json(&["friend", "list", "--json"])?;
        if list.as_array().is_some_and(|l| {
            l.iter().any(|f| {
                f["public_key"].as_str() == Some(pk)
                    && (f["connection"].as_str() != Some("none")) == online
            })
        }) {
            return Ok(());
        }
        ensure!(
            start.elapsed() < STEP,
            "{pk} not {}: {list}",
            if online { "online" } else { "offline" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_online(up: &FerryUp, pk: &str) -> anyhow::Result<()> {
    wait_connection(up, pk, true)
}

/// `line` without ANSI colour codes (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut esc = false;
    for c in line.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (false, c) => out.push(c),
            (true, 'm') => esc = false,
            (true, _) => {}
        }
    }
    out
}

/// `up`'s log, colour codes removed.
fn log(up: &FerryUp) -> Vec<String> {
    up.stderr.snapshot().iter().map(|l| plain(l)).collect()
}

/// Lines of `up`'s log containing `needle`.
fn count(up: &FerryUp, needle: &str) -> usize {
    log(up).iter().filter(|l| l.contains(needle)).count()
}

/// Seconds since midnight UTC of a log line's RFC 3339 timestamp (`2026-11-25T06:40:01.123456Z`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?;
    let t = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, v: &[f64]) {
    if v.is_empty() {
        println!("SUMMARY {name} n=0");
        return;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    println!(
        "SUMMARY {name} n={} median_s={:.2} p90_s={:.2} max_s={:.2} min_s={:.2}",
        s.len(),
        quantile(&s, 0.5),
        quantile(&s, 0.9),
        s[s.len() - 1],
        s[0]
    );
}

fn start_up(ferry: &Path, profile: tempfile::TempDir, infra: &Infra) -> anyhow::Result<FerryUp> {
    FerryUp::start_with_profile(ferry, profile, &infra.ferry_args())
}

/// B while it is down.
enum Down {
    /// Stopped with `ferry stop`: its profile.
    Stopped(tempfile::TempDir),
    /// Killed (SIGKILL by PID), to be restarted on the same port.
    Killed(FerryUp),
}

impl Down {
    fn take_down(b: FerryUp, kill: bool) -> anyhow::Result<Self> {
        if kill {
            let mut b = b;
            b.kill9()?;
            Ok(Self::Killed(b))
        } else {
            Ok(Self::Stopped(b.stop_keep_profile()?))
        }
    }

    fn profile(&self) -> &Path {
        match self {
            Self::Stopped(p) => p.path(),
            Self::Killed(b) => b.profile(),
        }
    }

    /// Empties the store peers saved in `mail.json` (a cold start).
    fn forget_peers(&self) -> anyhow::Result<()> {
        let path = self.profile().join("mail.json");
        let Ok(text) = std::fs::read(&path) else {
            return Ok(());
        };
        let mut v: serde_json::Value = serde_json::from_slice(&text)?;
        if let Some(p) = v.get_mut("peers") {
            *p = serde_json::Value::Array(Vec::new());
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
        Ok(())
    }

    fn bring_up(self, ferry: &Path, infra: &Infra) -> anyhow::Result<FerryUp> {
        match self {
            Self::Stopped(p) => start_up(ferry, p, infra),
            Self::Killed(mut b) => {
                b.restart()?;
                Ok(b)
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let ferry = a.ferry.as_path();
    let infra = Infra::new(a.infra)?;
    let mut storers = Vec::new();
    for _ in 0..a.storers {
        let p = FerryUp::profile_with_config(ferry, LOOPBACK_STORE)?;
        storers.push(start_up(ferry, p, &infra)?);
    }
    let sender = start_up(ferry, FerryUp::profile_with_config(ferry, "")?, &infra)?;
    let recipient = start_up(ferry, FerryUp::profile_with_config(ferry, "")?, &infra)?;
    ensure!(
        recipient
            .cli(&["set", "auto-accept", "on"])?
            .status
            .success()
    );
    let (a_pk, b_pk) = (public_key(&sender)?, public_key(&recipient)?);
    let out = sender.cli(&["friend", "add", &tox_id(&recipient)?, "hi"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_online(&sender, &b_pk)?;
    wait_online(&recipient, &a_pk)?;
    for n in storers.iter().chain([&sender, &recipient]) {
        n.wait_store_capable(2, STEP)?;
    }
    // Both learn the other is a ferry node (hello packets) before B goes offline.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "network: {} in-process DHT nodes, {} storers, sender {}, B {}{}, rounds {}",
        a.infra,
        a.storers,
        if a.sender_up { "stays up" } else { "down" },
        if a.kill {
            "killed (SIGKILL)"
        } else {
            "stopped (ferry stop)"
        },
        if a.cold {
            ", saved peers forgotten"
        } else {
            ""
        },
        a.rounds
    );

    let mut b_down = Some(Down::take_down(recipient, a.kill)?);
    let mut sender = Some(sender);
    let mut a_profile = None;
    let (mut from_start, mut from_capable, mut from_log) = (Vec::new(), Vec::new(), Vec::new());
    let mut paths = Vec::new();
    for i in 0..a.rounds {
        let text = format!("offline {i}");
        let s = match sender.take() {
            Some(s) => s,
            None => {
                let s = start_up(ferry, a_profile.take().context("a profile")?, &infra)?;
                s.wait_store_capable(2, STEP)?;
                s
            }
        };
        // "Offline": A has noticed (at once after `ferry stop`; after a SIGKILL, when its
        // session times out). A message sent before that goes into the dead session and is
        // mailed when the session times out.
        let noticed = Instant::now();
        if !a.no_wait {
            wait_connection(&s, &b_pk, false)?;
        }
        let noticed_s = noticed.elapsed().as_secs_f64();
        let stored_before = count(&s, "offline message stored");
        let out = s.cli(&["send", &b_pk, &text])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = Instant::now();
        while !a.no_wait && count(&s, "offline message stored") <= stored_before {
            ensure!(
                sent.elapsed() < STEP,
                "the mail put never finished: {}",
                s.stderr.snapshot().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mailed_s = sent.elapsed().as_secs_f64();
        let stored = if a.no_wait { Vec::new() } else { log(&s) }
            .iter()
            .rev()
            .find(|l| l.contains("offline message stored"))
            .and_then(|l| l.split("stored=").nth(1).map(str::to_string))
            .unwrap_or_default();
        if std::env::var_os("OFFLINEBENCH_LOGS").is_some() {
            eprintln!("--- A's log, round {i}\n{}", log(&s).join("\n"));
        }
        if a.sender_up {
            sender = Some(s);
        } else {
            a_profile = Some(s.stop_keep_profile()?);
        }

        let t0 = Instant::now();
        let wall0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64()
            % 86_400.0;
        let down = b_down.take().context("b down")?;
        if a.cold {
            down.forget_peers()?;
        }
        let b = down.bring_up(ferry, &infra)?;
        let api_s = t0.elapsed().as_secs_f64();
        let mut capable_s = None;
        let delivered_s = loop {
            if capable_s.is_none()
                && b.json(&["store", "status", "--json"])?["capable_nodes"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 1
            {
                capable_s = Some(t0.elapsed().as_secs_f64());
            }
            if incoming(&b, &a_pk)?.contains(&text) {
                break t0.elapsed().as_secs_f64();
            }
            ensure!(
                t0.elapsed() < STEP,
                "{text:?} never arrived: {}",
                b.stderr.snapshot().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Which path delivered it, and when (B's own log clock).
        let log = log(&b);
        let (path, line) = match log.iter().find(|l| l.contains("offline message delivered")) {
            Some(l) if l.contains("directly") => ("direct", Some(l)),
            Some(l) => ("mailbox", Some(l)),
            None => ("session", None),
        };
        let log_s = line
            .and_then(|l| log_time(l))
            .map(|t| (t - wall0).rem_euclid(86_400.0));
        let capable = capable_s.unwrap_or(f64::NAN);
        // Store peers a holder knows (live ones and entries of killed processes not yet
        // expired after `CAPABLE_TIMEOUT`).
        let holder_knows = storers[0].json(&["store", "status", "--json"])?["capable_nodes"]
            .as_u64()
            .unwrap_or(0);
        println!(
            "ROUND {i} a_saw_offline_s={noticed_s:.2} mailed_s={mailed_s:.2} stored={stored} api_s={api_s:.2} capable_s={capable:.2} \
             delivered_s={delivered_s:.2} after_capable_s={:.2} log_delivered_s={} path={path} holder_knows={holder_knows}",
            delivered_s - capable,
            log_s.map_or("-".to_string(), |t| format!("{t:.2}")),
        );
        if std::env::var_os("OFFLINEBENCH_LOGS").is_some() {
            eprintln!("--- B's log, round {i}\n{}", log.join("\n"));
        }
        from_start.push(delivered_s);
        if capable_s.is_some() {
            from_capable.push(delivered_s - capable);
        }
        if let Some(t) = log_s {
            from_log.push(t);
        }
        paths.push(path);
        b_down = Some(Down::take_down(b, a.kill)?);
    }
    summary("from_process_start", &from_start);
    summary("from_first_capable_peer", &from_capable);
    summary("log_delivered_from_start", &from_log);
    println!(
        "PATHS mailbox={} direct={} session={}",
        paths.iter().filter(|p| **p == "mailbox").count(),
        paths.iter().filter(|p| **p == "direct").count(),
        paths.iter().filter(|p| **p == "session").count()
    );

    // Both up: every message exactly once, in order.
    let s = match sender.take() {
        Some(s) => s,
        None => start_up(ferry, a_profile.take().context("a profile")?, &infra)?,
    };
    let b = b_down.take().context("b down")?.bring_up(ferry, &infra)?;
    wait_online(&s, &b_pk)?;
    std::thread::sleep(Duration::from_secs(3));
    let got: Vec<String> = incoming(&b, &a_pk)?
        .into_iter()
        .filter(|t| t.starts_with("offline "))
        .collect();
    let want: Vec<String> = (0..a.rounds).map(|i| format!("offline {i}")).collect();
    let ok = got == want;
    println!("EXACTLY_ONCE_IN_ORDER {ok}");
    for n in storers.into_iter().chain([s, b]) {
        let _ = n.stop();
    }
    ensure!(ok, "got {got:?}, want {want:?}");
    Ok(())
}
