//! File transfer benchmark driver for `bench/file.sh` (issue 6): moves one file ferry→ferry,
//! ferry→c-toxcore, c-toxcore→ferry and c-toxcore→c-toxcore (`toxpeer`), checks the BLAKE3 hash
//! of every received copy and prints one `RESULT` line per case. During ferry→ferry it also sends
//! a chat message every 100 ms and prints the delay of each (`CHAT` line).
//!
//! ```text
//! filebench --ferry BIN --file PATH --work DIR [--cases ff,ft,tf,tt]
//!           [--infra-ip IP] [--a NS:IP] [--b NS:IP]
//! ```
//! Without `--a`/`--b` everything runs on 127.0.0.1. With them, the sender runs in namespace A
//! bound to its IP and the receiver in B; the bootstrap nodes bind `--infra-ip` (an address both
//! can reach, e.g. the middle namespace's, when this driver runs there). Processes are killed by
//! PID on exit. Nothing leaves loopback or the namespaces the script created.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ferry_testkit::{Infra, KillOnDrop, ToxClient, ToxClientOptions, free_udp_port};
use serde_json::Value;

const STEP: Duration = Duration::from_secs(120);
const TRANSFER: Duration = Duration::from_secs(900);

#[derive(Clone)]
struct Side {
    ns: Option<String>,
    ip: String,
}

struct Daemon {
    _child: KillOnDrop,
    ferry: PathBuf,
    profile: PathBuf,
}

impl Daemon {
    fn start(
        ferry: &Path,
        work: &Path,
        name: &str,
        side: &Side,
        boot: &[String],
    ) -> anyhow::Result<Self> {
        let profile = work.join(name);
        let _ = std::fs::remove_dir_all(&profile);
        let init = Command::new(ferry)
            .arg("--profile")
            .arg(&profile)
            .arg("init")
            .output()?;
        anyhow::ensure!(init.status.success(), "ferry init failed");
        let mut cmd = match &side.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(ferry);
                c
            }
            None => Command::new(ferry),
        };
        cmd.arg("--profile")
            .arg(&profile)
            .args([
                "up",
                "--bind",
                &side.ip,
                "--udp-port",
                &free_udp_port().to_string(),
            ])
            .args(["--no-lan", "--no-default-bootstrap"])
            .args(boot);
        let log = std::fs::File::create(work.join(format!("{name}.log")))?;
        let child = KillOnDrop(cmd.stdout(Stdio::null()).stderr(log).spawn()?);
        let d = Self {
            _child: child,
            ferry: ferry.to_path_buf(),
            profile,
        };
        let start = Instant::now();
        while !d.cli(&["status", "--json"])?.status.success() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "ferry up never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.ferry);
        c.arg("--profile").arg(&self.profile);
        c
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(self.cmd().args(args).output()?)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!("ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn id(&self) -> anyhow::Result<(String, String)> {
        let v = self.json(&["id", "--json"])?;
        Ok((
            v["public_key"].as_str().context("pk")?.to_string(),
            v["tox_id"].as_str().context("tox_id")?.to_string(),
        ))
    }

    fn wait_online(&self, pk: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let list = self.json(&["friend", "list", "--json"])?;
            if list.as_array().context("array")?.iter().any(|f| {
                f["public_key"].as_str().map(str::to_ascii_uppercase)
                    == Some(pk.to_ascii_uppercase())
                    && f["connection"].as_str() != Some("none")
            }) {
                return Ok(());
            }
            anyhow::ensure!(start.elapsed() < STEP, "friend {pk} not online");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_file(
        &self,
        what: &str,
        poll: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let list = self.json(&["file", "list", "--json"])?;
            if let Some(v) = list.as_array().context("array")?.iter().find(|v| pred(v)) {
                return Ok(v.clone());
            }
            if let Some(v) = list
                .as_array()
                .context("array")?
                .iter()
                .find(|v| v["error"].is_string())
            {
                bail!("{what}: transfer failed: {v}");
            }
            anyhow::ensure!(start.elapsed() < TRANSFER, "{what}: timed out: {list}");
            std::thread::sleep(poll);
        }
    }
}

fn blake3_file(p: &Path) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p)?)?;
    Ok(h.finalize().to_hex().to_string())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn tox(side: &Side, infra: &Infra, dir: &Path) -> anyhow::Result<ToxClient> {
    let mut t = ToxClient::spawn(&ToxClientOptions {
        port: free_udp_port(),
        bootstrap: infra.tox_bootstrap(),
        auto_accept: true,
        netns: side.ns.clone(),
        ..ToxClientOptions::default()
    })?;
    std::fs::create_dir_all(dir)?;
    t.request(&format!("FILE_DIR {}", dir.display()), "OK")?;
    t.request("FILE_AUTO 1", "OK")?;
    Ok(t)
}

fn report(case: &str, bytes: u64, secs: f64, ok: bool) {
    println!(
        "RESULT case={case} mib={:.0} secs={secs:.3} mib_per_s={:.1} hash={}",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs,
        if ok { "ok" } else { "MISMATCH" }
    );
}

/// A kept-alive HTTP/1.1 connection to a daemon's control socket (blocking; the probe's only
/// client, so no pipelining).
struct ApiConn {
    rd: BufReader<std::os::unix::net::UnixStream>,
}

impl ApiConn {
    fn connect(sock: &Path) -> std::io::Result<Self> {
        Ok(Self {
            rd: BufReader::new(std::os::unix::net::UnixStream::connect(sock)?),
        })
    }

    /// POSTs `body` (JSON) to `path` and reads the whole answer; an error for a non-2xx status.
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.rd.get_mut().write_all(req.as_bytes())?;
        let mut status = String::new();
        self.rd.read_line(&mut status)?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if self.rd.read_line(&mut h)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0u8; len];
        self.rd.read_exact(&mut answer)?;
        if status
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
        {
            Ok(())
        } else {
            Err(std::io::Error::other(status))
        }
    }
}

/// Chat probe: a `ferry messages --follow --json` child on the receiver and a thread that sends
/// `lat <unix ms>` every 100 ms from the sender until stopped, through the sender's control API
/// on one kept-alive connection (`FILEBENCH_CHAT=cli`: a `ferry send` process per message).
/// Delays in ms, from just before the send request to the line read on the receiver.
struct ChatProbe {
    stop: Arc<Mutex<bool>>,
    delays: Arc<Mutex<Vec<u128>>>,
    sender: Option<std::thread::JoinHandle<()>>,
    _follow: KillOnDrop,
}

impl ChatProbe {
    fn start(a: &Daemon, b: &Daemon, b_pk: &str, a_pk: &str) -> anyhow::Result<Self> {
        let mut follow = b
            .cmd()
            .args(["messages", a_pk, "--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = follow.stdout.take().context("stdout")?;
        let delays = Arc::new(Mutex::new(Vec::new()));
        let d2 = delays.clone();
        // `messages --follow` prints the history first: messages of an earlier probe would
        // count with their age, so only this probe's messages are measured.
        let started = unix_ms();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let now = unix_ms();
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["direction"] == "in"
                    && let Some(t) = v["text"].as_str().and_then(|t| t.strip_prefix("lat "))
                    && let Ok(sent) = t.parse::<u128>()
                    && sent >= started
                {
                    d2.lock().expect("lock").push(now.saturating_sub(sent));
                }
            }
        });
        let stop = Arc::new(Mutex::new(false));
        let s2 = stop.clone();
        let (ferry, profile, pk) = (a.ferry.clone(), a.profile.clone(), b_pk.to_string());
        // FILEBENCH_CHAT=cli: one `ferry send` process per message (includes process start on
        // cores the transfer saturates); default: one kept-alive API connection, as `ferry chat`
        // and any chat client use.
        let per_process = std::env::var("FILEBENCH_CHAT").is_ok_and(|v| v == "cli");
        let sender = std::thread::spawn(move || {
            let mut api: Option<ApiConn> = None;
            while !*s2.lock().expect("lock") {
                let text = format!("lat {}", unix_ms());
                if per_process {
                    let _ = Command::new(&ferry)
                        .arg("--profile")
                        .arg(&profile)
                        .args(["send", &pk, &text])
                        .output();
                } else {
                    let body = serde_json::json!({"friend": pk, "text": text}).to_string();
                    let conn = match api.take() {
                        Some(c) => Ok(c),
                        None => ApiConn::connect(&profile.join("ferry.sock")),
                    };
                    if let Ok(mut c) = conn
                        && c.post("/v1/messages/send", &body).is_ok()
                    {
                        api = Some(c);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(Self {
            stop,
            delays,
            sender: Some(sender),
            _follow: KillOnDrop(follow),
        })
    }

    fn finish(mut self) -> String {
        *self.stop.lock().expect("lock") = true;
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut d = self.delays.lock().expect("lock").clone();
        d.sort_unstable();
        if d.is_empty() {
            return "CHAT n=0".into();
        }
        let q = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
        format!(
            "CHAT n={} p50_ms={} p99_ms={} max_ms={}",
            d.len(),
            q(0.5),
            q(0.99),
            d[d.len() - 1]
        )
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut ferry, mut file, mut work) = (None, None, None);
    let mut cases = "ff,ft,tf,tt".to_string();
    let mut infra_ip: std::net::IpAddr = "127.0.0.1".parse()?;
    let lo = Side {
        ns: None,
        ip: "127.0.0.1".into(),
    };
    let (mut sa, mut sb) = (lo.clone(), lo);
    let side = |s: String| -> anyhow::Result<Side> {
        let (ns, ip) = s.split_once(':').context("NS:IP")?;
        Ok(Side {
            ns: Some(ns.into()),
            ip: ip.into(),
        })
    };
    while let Some(a) = args.next() {
        let v = args.next().context("missing value")?;
        match a.as_str() {
            "--ferry" => ferry = Some(PathBuf::from(v)),
            "--file" => file = Some(PathBuf::from(v)),
            "--work" => work = Some(PathBuf::from(v)),
            "--cases" => cases = v,
            "--infra-ip" => infra_ip = v.parse()?,
            "--a" => sa = side(v)?,
            "--b" => sb = side(v)?,
            _ => bail!("unknown argument {a}"),
        }
    }
    let ferry = ferry.context("--ferry")?;
    let file = file.context("--file")?;
    let work = work.context("--work")?;
    std::fs::create_dir_all(&work)?;
    let size = std::fs::metadata(&file)?.len();
    let want = blake3_file(&file)?;
    let file_s = file.to_str().context("utf8")?.to_string();
    let name = file
        .file_name()
        .context("name")?
        .to_string_lossy()
        .to_string();
    let infra = Infra::new_on(infra_ip, 4)?;
    let boot = infra.ferry_args();

    for case in cases.split(',') {
        let recv_dir = work.join(format!("recv-{case}"));
        let _ = std::fs::remove_dir_all(&recv_dir);
        std::fs::create_dir_all(&recv_dir)?;
        match case {
            "ff" => {
                let a = Daemon::start(&ferry, &work, "ff-a", &sa, &boot)?;
                let b = Daemon::start(&ferry, &work, "ff-b", &sb, &boot)?;
                anyhow::ensure!(b.cli(&["set", "auto-accept", "on"])?.status.success());
                let (a_pk, _) = a.id()?;
                let (b_pk, b_tox) = b.id()?;
                anyhow::ensure!(a.cli(&["friend", "add", &b_tox, "bench"])?.status.success());
                a.wait_online(&b_pk)?;
                b.wait_online(&a_pk)?;
                a.json(&["file", "send", &b_pk, &file_s, "--json"])?;
                let offer = b.wait_file("offer", Duration::from_millis(100), |v| {
                    v["direction"] == "in" && v["state"] == "offered"
                })?;
                let id = offer["id"].as_u64().context("id")?.to_string();
                // Baseline: the same chat probe with no transfer running (CLI and store costs).
                let idle = ChatProbe::start(&a, &b, &b_pk, &a_pk)?;
                std::thread::sleep(Duration::from_secs(3));
                println!("{} (idle, no transfer)", idle.finish());
                let probe = ChatProbe::start(&a, &b, &b_pk, &a_pk)?;
                let t0 = Instant::now();
                b.json(&[
                    "file",
                    "accept",
                    &id,
                    "--to",
                    recv_dir.to_str().context("utf8")?,
                    "--json",
                ])?;
                let done = b.wait_file("ff done", Duration::from_millis(100), |v| {
                    v["id"].as_u64().map(|i| i.to_string()) == Some(id.clone())
                        && v["state"] == "done"
                })?;
                let secs = t0.elapsed().as_secs_f64();
                let chat = probe.finish();
                let path = PathBuf::from(done["path"].as_str().context("path")?);
                let ok =
                    done["hash"].as_str() == Some(want.as_str()) && blake3_file(&path)? == want;
                report("ferry->ferry", size, secs, ok);
                println!("{chat} (during the transfer)");
                let _ = std::fs::remove_file(&path);
            }
            "ft" => {
                let a = Daemon::start(&ferry, &work, "ft-a", &sa, &boot)?;
                let mut t = tox(&sb, &infra, &recv_dir)?;
                let (a_pk, _) = a.id()?;
                anyhow::ensure!(
                    a.cli(&["friend", "add", &t.address, "bench"])?
                        .status
                        .success()
                );
                t.wait_for("FRIEND_CONNECTION 0 ", STEP)?;
                a.wait_online(t.public_key())?;
                let _ = a_pk;
                let t0 = Instant::now();
                a.json(&["file", "send", t.public_key(), &file_s, "--json"])?;
                let line = t.wait_for("FILE_DONE ", TRANSFER)?;
                let secs = t0.elapsed().as_secs_f64();
                let path = PathBuf::from(line.split_whitespace().nth(4).context("path")?);
                let ok = blake3_file(&path)? == want;
                report("ferry->c-toxcore", size, secs, ok);
                let _ = std::fs::remove_file(&path);
            }
            "tf" => {
                let mut t = tox(&sa, &infra, &work.join("tf-tox"))?;
                let b = Daemon::start(&ferry, &work, "tf-b", &sb, &boot)?;
                anyhow::ensure!(
                    b.cli(&["friend", "add", &t.address, "bench"])?
                        .status
                        .success()
                );
                t.wait_for("FRIEND_CONNECTION 0 ", STEP)?;
                b.wait_online(t.public_key())?;
                t.request(&format!("FILE_SEND 0 {file_s}"), "FILE_SENDING")?;
                let offer = b.wait_file("offer", Duration::from_millis(100), |v| {
                    v["direction"] == "in" && v["state"] == "offered" && v["name"] == name.as_str()
                })?;
                let id = offer["id"].as_u64().context("id")?.to_string();
                let t0 = Instant::now();
                b.json(&[
                    "file",
                    "accept",
                    &id,
                    "--to",
                    recv_dir.to_str().context("utf8")?,
                    "--json",
                ])?;
                let done = b.wait_file("tf done", Duration::from_millis(100), |v| {
                    v["id"].as_u64().map(|i| i.to_string()) == Some(id.clone())
                        && v["state"] == "done"
                })?;
                let secs = t0.elapsed().as_secs_f64();
                let path = PathBuf::from(done["path"].as_str().context("path")?);
                let ok =
                    done["hash"].as_str() == Some(want.as_str()) && blake3_file(&path)? == want;
                report("c-toxcore->ferry", size, secs, ok);
                let _ = std::fs::remove_file(&path);
            }
            "tt" => {
                let mut ta = tox(&sa, &infra, &work.join("tt-a"))?;
                let mut tb = tox(&sb, &infra, &recv_dir)?;
                ta.add_friend(&tb.address, "bench")?;
                ta.wait_for("FRIEND_CONNECTION 0 ", STEP)?;
                tb.wait_for("FRIEND_CONNECTION 0 ", STEP)?;
                let t0 = Instant::now();
                ta.request(&format!("FILE_SEND 0 {file_s}"), "FILE_SENDING")?;
                let line = tb.wait_for("FILE_DONE ", TRANSFER)?;
                let secs = t0.elapsed().as_secs_f64();
                let path = PathBuf::from(line.split_whitespace().nth(4).context("path")?);
                let ok = blake3_file(&path)? == want;
                report("c-toxcore->c-toxcore", size, secs, ok);
                let _ = std::fs::remove_file(&path);
            }
            other => bail!("unknown case {other}"),
        }
    }
    Ok(())
}
