//! `ferry devnet --data` (issue 9 item 5): the DHT value store shown end to end between real
//! `ferry up` processes on loopback. Alice registers a username, Bob resolves it and befriends
//! her by name, Bob's process stops, Alice writes to him while he is offline (the message is
//! sealed into his mailbox at the nodes nearest it), Bob's process comes back and reads it,
//! exactly once, and Alice gets the delivery receipt.
//!
//! The network is `--nodes` processes: `nodes − 2` store holders, then Alice and Bob. Every
//! process is this binary's `ferry up --bind 127.0.0.1 --no-default-bootstrap --no-lan
//! --no-bootstrap-relays`, bootstrapped from the first holder: nothing leaves loopback. Every
//! node sits in 127.0.0.0/24, one source prefix to a holder's quotas, so the profiles raise the
//! per-source limits (`[store]` in `config.toml`). Children are stopped by PID (SIGTERM, then
//! SIGKILL) and the profiles removed when the run ends, fails or is interrupted (kept, with the
//! daemons' logs, when `FERRY_DEVNET_KEEP` is set).

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_api::{
    AddFriend, Client, Friend, ListMessages, Message, NameInfo, NameRequest, SelfInfo, SelfUpdate,
    SendMessage, Status, StoreStatus,
};
use serde::Serialize;

/// Options of `ferry devnet --data`.
#[derive(Debug, Clone)]
pub(crate) struct DataOptions {
    /// Processes in all (≥ 4): `nodes − 2` store holders, Alice and Bob.
    pub nodes: usize,
    /// Print the report as JSON on stdout (progress goes to stderr).
    pub json: bool,
}

/// What `ferry devnet --data --json` prints.
#[derive(Debug, Serialize, Default)]
pub(crate) struct DataReport {
    /// Store-holding processes besides Alice and Bob.
    pub holders: usize,
    /// The username Alice registered.
    pub name: String,
    /// Seconds `name register` took (lookup, proof of work, puts).
    pub register_s: f64,
    /// Seconds Bob's `name resolve` took.
    pub resolve_s: f64,
    /// The name resolved to Alice's Tox ID.
    pub resolved_tox_id_ok: bool,
    /// The key fingerprint users compare to tell look-alike names apart.
    pub fingerprint: String,
    /// Seconds from Bob's `friend add` (by the resolved Tox ID) until both were online.
    pub friends_online_s: f64,
    /// Seconds from Alice's `send` until her node had sealed the message into Bob's mailbox
    /// (it first notices that Bob's session is gone, then seals what Bob never receipted).
    pub mailed_after_s: f64,
    /// Items the holders gained when Alice wrote to the offline Bob (sealed mail copies, one
    /// second after the sealing; her request mail being deleted may hide some).
    pub mail_copies_stored: u64,
    /// Milliseconds from Bob's restart until the message was in his history.
    pub delivered_after_restart_ms: Option<u64>,
    /// Bob has the message exactly once.
    pub exactly_once: bool,
    /// Alice's copy is marked delivered (the receipt came back).
    pub receipt: bool,
}

/// The message Alice writes to the offline Bob.
const TEXT: &str = "written while you were offline";
/// Budget for each step (the DHT converging, a lookup, a delivery).
const STEP: Duration = Duration::from_secs(60);
/// `[store]` of every profile: loopback nodes are one source prefix.
const STORE_CONFIG: &str = "[store]\nputs_per_minute = 1000\nper_source_items = 1000\n";

/// The processes of this run: stopped by PID and their profiles removed on drop (also when the
/// run future is dropped by Ctrl-C).
struct Procs {
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl Procs {
    fn stop(child: &mut Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            Self::stop(c);
        }
        if std::env::var_os("FERRY_DEVNET_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One `ferry up` of the run.
struct Node {
    name: String,
    profile: PathBuf,
    port: u16,
    /// Index in [`Procs::children`].
    slot: usize,
    api: Client,
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Node {
    /// `ferry init` a profile `dir/name` and start it.
    async fn create(
        procs: &mut Procs,
        name: &str,
        bootstrap: Option<&str>,
    ) -> anyhow::Result<Self> {
        let profile = procs.dir.join(name);
        std::fs::create_dir_all(&profile)?;
        ferry_daemon::profile::init(&profile, false)?;
        std::fs::write(
            profile.join(ferry_daemon::market::CONFIG_FILE),
            STORE_CONFIG,
        )?;
        let mut node = Self {
            name: name.to_string(),
            api: Client::new(ferry_api::socket_path(&profile)),
            profile,
            port: free_udp_port()?,
            slot: procs.children.len(),
        };
        procs.children.push(None);
        node.start(procs, bootstrap).await?;
        Ok(node)
    }

    /// Starts `ferry up` on this node's profile and port; waits (≤ 20 s) for its API.
    async fn start(&mut self, procs: &mut Procs, bootstrap: Option<&str>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the ferry binary")?;
        let log_path = procs.dir.join(format!("{}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(exe);
        cmd.arg("--profile")
            .arg(&self.profile)
            .args(["up", "--bind", "127.0.0.1", "--udp-port"])
            .arg(self.port.to_string())
            .args([
                "--no-default-bootstrap",
                "--no-lan",
                "--no-bootstrap-relays",
            ]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning ferry up")?;
        procs.children[self.slot] = Some(child);
        let start = Instant::now();
        while self.api.get::<Status>("/v1/status").await.is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "ferry up ({}) did not answer in 20 s; log: {}",
                self.name,
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the process (SIGTERM by PID), keeping the profile.
    fn stop(&self, procs: &mut Procs) {
        if let Some(mut c) = procs.children[self.slot].take() {
            Procs::stop(&mut c);
        }
    }

    async fn status(&self) -> anyhow::Result<Status> {
        Ok(self.api.get("/v1/status").await?)
    }

    async fn store(&self) -> anyhow::Result<StoreStatus> {
        Ok(self.api.get("/v1/store/status").await?)
    }

    async fn online(&self, pk: &str) -> bool {
        self.api
            .get::<Vec<Friend>>("/v1/friends")
            .await
            .ok()
            .and_then(|l| {
                l.into_iter()
                    .find(|f| f.public_key.eq_ignore_ascii_case(pk))
            })
            .is_some_and(|f| f.connection != "none")
    }

    async fn history(&self, pk: &str) -> anyhow::Result<Vec<Message>> {
        let req = ListMessages {
            friend: Some(pk.to_string()),
            after: 0,
            limit: Some(1000),
            wait_ms: 0,
        };
        Ok(self.api.post("/v1/messages/list", &req).await?)
    }
}

fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Polls `check` every 100 ms until it is true; an error naming `what` after [`STEP`].
async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        anyhow::ensure!(
            start.elapsed() < STEP,
            "{what}: not within {} s",
            STEP.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(start.elapsed())
}

/// Retries an API call until it succeeds (the DHT may still be converging).
async fn retry<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ferry_api::ClientError>>,
{
    let start = Instant::now();
    loop {
        match call().await {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(e) if start.elapsed() >= STEP => anyhow::bail!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs the whole demo; stops every process before returning (or on Ctrl-C/SIGTERM).
pub(crate) async fn run_data(opts: DataOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        (4..=32).contains(&opts.nodes),
        "ferry devnet --data needs --nodes in 4..=32 (holders, then Alice and Bob)"
    );
    let report = crate::devnet_netns::until_signal(demo(&opts)).await?;
    say(
        opts.json,
        "torn down: every ferry up stopped, profiles removed",
    );
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    anyhow::ensure!(
        report.resolved_tox_id_ok && report.exactly_once && report.receipt,
        "the name or the offline message did not come through"
    );
    Ok(())
}

async fn demo(opts: &DataOptions) -> anyhow::Result<DataReport> {
    let json = opts.json;
    let dir = std::env::temp_dir().join(format!("ferry-devnet-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut procs = Procs {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let holders = opts.nodes - 2;
    let mut report = DataReport {
        holders,
        ..DataReport::default()
    };

    let first = Node::create(&mut procs, "holder0", None).await?;
    let s = first.status().await?;
    let boot = format!("127.0.0.1:{}:{}", first.port, s.dht_public_key);
    let mut nodes = vec![first];
    for i in 1..holders {
        nodes.push(Node::create(&mut procs, &format!("holder{i}"), Some(&boot)).await?);
    }
    let alice = Node::create(&mut procs, "alice", Some(&boot)).await?;
    let mut bob = Node::create(&mut procs, "bob", Some(&boot)).await?;
    say(
        json,
        &format!(
            "{} ferry up processes on 127.0.0.1 ({holders} holders, alice, bob); profiles in {}",
            opts.nodes,
            dir.display()
        ),
    );
    let need = (holders as u64).min(2);
    for n in [&alice, &bob] {
        wait_until(
            &format!("{} finding store-capable peers", n.name),
            || async { n.store().await.is_ok_and(|s| s.capable_nodes >= need) },
        )
        .await?;
    }
    let alice_status = alice.status().await?;
    let bob_status = bob.status().await?;

    // Usernames.
    report.name = "alice".into();
    let req = NameRequest {
        name: report.name.clone(),
    };
    let (reg, t): (NameInfo, _) = retry("alice: name register", || {
        alice.api.post("/v1/names/register", &req)
    })
    .await?;
    report.register_s = t.as_secs_f64();
    say(
        json,
        &format!(
            "alice registered the name {:?} in {:.1} s (fingerprint {})",
            reg.name, report.register_s, reg.fingerprint
        ),
    );
    let req = NameRequest {
        name: format!("@{}", report.name),
    };
    let (found, t): (NameInfo, _) = retry("bob: name resolve", || {
        bob.api.post("/v1/names/resolve", &req)
    })
    .await?;
    report.resolve_s = t.as_secs_f64();
    report.resolved_tox_id_ok = found.tox_id.eq_ignore_ascii_case(&alice_status.tox_id);
    report.fingerprint = found.fingerprint.clone();
    say(
        json,
        &format!(
            "bob resolved @{} in {:.1} s → {} ({})",
            report.name,
            report.resolve_s,
            found.tox_id,
            if report.resolved_tox_id_ok {
                "alice's Tox ID"
            } else {
                "NOT alice's Tox ID"
            }
        ),
    );
    anyhow::ensure!(
        report.resolved_tox_id_ok,
        "the name resolved to someone else"
    );

    // Friends by name.
    let _: SelfInfo = alice
        .api
        .post(
            "/v1/self",
            &SelfUpdate {
                auto_accept: Some(true),
                ..SelfUpdate::default()
            },
        )
        .await?;
    let _: Friend = bob
        .api
        .post(
            "/v1/friends/add",
            &AddFriend {
                tox_id: found.tox_id.clone(),
                message: "found you by your name".into(),
            },
        )
        .await?;
    let t = wait_until("alice and bob online", || async {
        alice.online(&bob_status.public_key).await && bob.online(&alice_status.public_key).await
    })
    .await?;
    report.friends_online_s = t.as_secs_f64();
    say(
        json,
        &format!(
            "bob added alice by name; both online after {:.1} s",
            report.friends_online_s
        ),
    );
    // Both learn that the other is a ferry node (hello packets) before Bob goes offline.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Offline message.
    bob.stop(&mut procs);
    say(json, "bob's process stopped");
    let mut held_before = 0;
    for n in &nodes {
        held_before += n.store().await?.items;
    }
    let _: Message = alice
        .api
        .post(
            "/v1/messages/send",
            &SendMessage {
                friend: bob_status.public_key.clone(),
                text: TEXT.into(),
                kind: "normal".into(),
            },
        )
        .await?;
    let bob_pk = bob_status.public_key.clone();
    let (alice_ref, bpk) = (&alice, &bob_pk);
    let t = wait_until(
        "alice sealing the message into bob's mailbox",
        || async move {
            alice_ref
                .history(bpk)
                .await
                .is_ok_and(|h| h.iter().any(|m| m.text == TEXT && m.mailed))
        },
    )
    .await?;
    report.mailed_after_s = t.as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut held_after = 0;
    for n in &nodes {
        held_after += n.store().await?.items;
    }
    report.mail_copies_stored = held_after.saturating_sub(held_before);
    say(
        json,
        &format!(
            "alice wrote to the offline bob: after {:.1} s, {} sealed copies held at the \
             mailbox's nearest nodes",
            report.mailed_after_s, report.mail_copies_stored
        ),
    );
    let restarted = Instant::now();
    bob.start(&mut procs, Some(&boot)).await?;
    let alice_pk = alice_status.public_key.clone();
    let bob_ref = &bob;
    let apk = &alice_pk;
    wait_until(
        "bob reading alice's message after his restart",
        || async move {
            bob_ref
                .history(apk)
                .await
                .is_ok_and(|h| h.iter().any(|m| m.direction == "in" && m.text == TEXT))
        },
    )
    .await?;
    let ms = restarted.elapsed().as_millis() as u64;
    report.delivered_after_restart_ms = Some(ms);
    say(
        json,
        &format!("bob came back and read it {ms} ms after his process started"),
    );
    let receipt = wait_until("alice's delivery receipt", || async move {
        alice_ref.history(bpk).await.is_ok_and(|h| {
            h.iter()
                .any(|m| m.direction == "out" && m.text == TEXT && m.delivered)
        })
    })
    .await;
    report.receipt = receipt.is_ok();
    // Duplicates would come from the mailbox and the direct resend racing: give them time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copies = bob
        .history(&alice_pk)
        .await?
        .iter()
        .filter(|m| m.direction == "in" && m.text == TEXT)
        .count();
    report.exactly_once = copies == 1;
    say(
        json,
        &format!(
            "bob has it {copies} time(s); alice's receipt: {}",
            if report.receipt { "yes" } else { "no" }
        ),
    );
    drop(nodes);
    drop(procs);
    Ok(report)
}
