//! Paid forwarding on a shared JSON-RPC ledger (issue 8, `backend = "json-rpc"`): one
//! `ferry chain serve` process (127.0.0.1, port picked by the OS) and two `ferry up` processes
//! (a paid relay and a client) whose markets settle on it. Checks that `ferry up` refuses an
//! unreachable endpoint or the wrong chain id with a clear message, that accounts start unfunded
//! (a JSON-RPC chain is funded by `ferry chain fund`, not by the daemon), and that `ferry wallet`
//! agrees with the chain after funding and a deposit (channel sender, receiver, deposit,
//! balances read back over JSON-RPC). Paying and claiming through an exit is in
//! `tests/market_netns.rs`. Nothing leaves 127.0.0.1; processes are killed by PID.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_pay::{Address, B256, JsonRpcEvm, PaymentBackend, U256};
use ferry_testkit::{FerryUp, Infra, KillOnDrop};
use serde_json::Value;

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(60);

/// `ferry chain serve --listen 127.0.0.1:0 --json`: the process and its first line.
fn chain_serve() -> (KillOnDrop, Value) {
    let mut child = Command::new(ferry())
        .args(["chain", "serve", "--listen", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry chain serve");
    let stdout = child.stdout.take().expect("stdout");
    let child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let v: Value = serde_json::from_str(&line).expect("json line");
    (child, v)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `ferry up` on a fresh profile with `args` must exit with an error; returns its stderr.
fn up_fails(args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("tmp");
    let init = Command::new(ferry())
        .arg("--profile")
        .arg(profile.path())
        .arg("init")
        .output()
        .expect("init");
    assert!(init.status.success());
    let port = ferry_testkit::free_udp_port().to_string();
    let child = Command::new(ferry())
        .arg("--profile")
        .arg(profile.path())
        .args([
            "up",
            "--bind",
            "127.0.0.1",
            "--udp-port",
            &port,
            "--no-lan",
            "--no-default-bootstrap",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry up");
    let mut child = KillOnDrop(child);
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(!status.success(), "ferry up {args:?} should fail");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "ferry up {args:?} kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    err
}

fn public_key(up: &FerryUp) -> String {
    up.json(&["status", "--json"]).expect("status")["public_key"]
        .as_str()
        .expect("public_key")
        .to_string()
}

fn wait_online(up: &FerryUp, pk: &str) {
    let start = Instant::now();
    loop {
        let list = up.json(&["friend", "list", "--json"]).expect("friend list");
        let online = list.as_array().expect("array").iter().any(|f| {
            f["public_key"].as_str() == Some(pk) && f["connection"].as_str() != Some("none")
        });
        if online {
            return;
        }
        assert!(start.elapsed() < STEP, "friend {pk} not online: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn address(w: &Value) -> Address {
    w["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("0x address")
}

#[test]
fn relay_and_client_settle_on_one_chain_serve_process() {
    let started = Instant::now();
    let (_chain, info) = chain_serve();
    let url = info["url"].as_str().expect("url").to_string();
    let chain_id = info["chain_id"].as_u64().expect("chain_id");
    let hub: Address = info["hub"].as_str().expect("hub").parse().expect("hub");
    let rt = rt();
    let chain = rt
        .block_on(JsonRpcEvm::connect(&url, Some(chain_id), None, None))
        .expect("connect");
    assert_eq!(chain.hub(), hub);

    // Clear refusals: nothing listening; the wrong chain id.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://127.0.0.1:{}", l.local_addr().expect("addr").port())
    };
    let err = up_fails(&[
        "--market",
        "--market-backend",
        "json-rpc",
        "--rpc-url",
        &closed,
    ]);
    assert!(
        err.contains(&closed) && err.contains("ferry chain serve"),
        "{err}"
    );
    let wrong = (chain_id + 1).to_string();
    let err = up_fails(&[
        "--market",
        "--market-backend",
        "json-rpc",
        "--rpc-url",
        &url,
        "--chain-id",
        &wrong,
    ]);
    assert!(
        err.contains("chain id") && err.contains("--chain-id"),
        "{err}"
    );

    let infra = Infra::new(4).expect("infra");
    // A paid relay from flags, a client from its config.toml; both on the served chain.
    let mut args = infra.ferry_args();
    args.extend(
        [
            "--relay-node",
            "--market",
            "--price-per-kib",
            "5",
            "--market-backend",
            "json-rpc",
            "--rpc-url",
            &url,
            "--chain-id",
            &chain_id.to_string(),
        ]
        .map(String::from),
    );
    let relay = FerryUp::start(ferry(), &args).expect("relay");
    let profile = tempfile::tempdir().expect("tmp");
    let init = Command::new(ferry())
        .arg("--profile")
        .arg(profile.path())
        .arg("init")
        .output()
        .expect("init");
    assert!(init.status.success());
    std::fs::write(
        profile.path().join("config.toml"),
        format!(
            "[market]\nenabled = true\nmax_price_per_kib = 10\nbackend = \"json-rpc\"\n\
             rpc_url = \"{url}\"\nchain_id = {chain_id}\nhub = \"{hub:#x}\"\n"
        ),
    )
    .expect("config.toml");
    let client =
        FerryUp::start_with_profile(ferry(), profile, &infra.ferry_args()).expect("client");
    assert!(
        !client.profile().join("market/ledger.json").exists(),
        "no embedded ledger on json-rpc"
    );

    // Unfunded until `ferry chain fund`; then the wallet shows the chain's balance.
    let rw = relay.json(&["wallet", "--json"]).expect("wallet");
    let cw = client.json(&["wallet", "--json"]).expect("wallet");
    assert_eq!(rw["balance"], "0", "{rw}");
    assert_eq!(cw["balance"], "0", "{cw}");
    let (raddr, caddr) = (address(&rw), address(&cw));
    let fund = Command::new(ferry())
        .args([
            "chain",
            "fund",
            &format!("{caddr:#x}"),
            "1000000000000000000",
        ])
        .args(["--rpc-url", &url, "--json"])
        .output()
        .expect("fund");
    assert!(
        fund.status.success(),
        "{}",
        String::from_utf8_lossy(&fund.stderr)
    );
    let cw = client.json(&["wallet", "--json"]).expect("wallet");
    assert_eq!(cw["balance"], "1000000000000000000");

    let (r_pk, c_pk) = (public_key(&relay), public_key(&client));
    let out = client.cli(&["friend", "add", &r_pk]).expect("add");
    assert!(out.status.success());
    wait_online(&client, &r_pk);
    wait_online(&relay, &c_pk);

    // Deposit once the relay's binding (its account) has come over the session.
    let start = Instant::now();
    let w = loop {
        let out = client
            .cli(&["wallet", "deposit", &r_pk, "1000000", "--json"])
            .expect("deposit");
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).expect("json");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "deposit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let ch = &w["channels"][0];
    assert_eq!(ch["peer"], r_pk.as_str());
    assert_eq!(ch["deposit"], "1000000");
    let id: B256 = ch["channel_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("B256");
    let st = rt
        .block_on(chain.channel(id))
        .expect("rpc")
        .expect("channel on the chain");
    assert_eq!(
        (st.sender, st.receiver, st.deposit, st.claimed),
        (caddr, raddr, U256::from(1_000_000u64), U256::ZERO)
    );
    assert_eq!(
        w["balance"].as_str(),
        Some(
            rt.block_on(chain.balance(caddr))
                .expect("balance")
                .to_string()
                .as_str()
        ),
        "wallet balance = chain balance after the deposit (and its gas)"
    );
    let e = relay.json(&["earnings", "--json"]).expect("earnings");
    assert_eq!(e["total"], "0");

    assert!(client.stop().expect("stop client"));
    assert!(relay.stop().expect("stop relay"));
    eprintln!("json-rpc loopback test took {:?}", started.elapsed());
}
