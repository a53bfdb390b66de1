//! Paid forwarding from the command line (issue 8): `ferry up --market` (and `[market]` in the
//! profile's `config.toml`), `ferry wallet|contracts|earnings --json` shapes, the market off by
//! default, and `ferry wallet deposit` opening a channel to a paid relay whose binding came over
//! the friend session (market packets, id 175). Real `ferry up` processes on loopback over a
//! small network of in-process DHT nodes; nothing leaves 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra};
use serde_json::Value;

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(60);

fn public_key(up: &FerryUp) -> String {
    up.json(&["status", "--json"]).expect("status")["public_key"]
        .as_str()
        .expect("public_key")
        .to_string()
}

fn is_wei(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

fn check_wallet(w: &Value) {
    let addr = w["address"].as_str().expect("address");
    assert!(
        addr.len() == 42
            && addr.starts_with("0x")
            && addr[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{w}"
    );
    assert!(is_wei(&w["balance"]), "{w}");
    for c in w["channels"].as_array().expect("channels") {
        for k in ["deposit", "cumulative", "claimed"] {
            assert!(is_wei(&c[k]), "{k}: {c}");
        }
        assert_eq!(c["peer"].as_str().map(str::len), Some(64), "{c}");
        assert_eq!(c["channel_id"].as_str().map(str::len), Some(66), "{c}");
    }
}

fn check_earnings(e: &Value) {
    for k in ["total", "claimed", "unclaimed"] {
        assert!(is_wei(&e[k]), "{k}: {e}");
    }
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

/// The market is off unless asked for; on, the three commands answer with the documented JSON;
/// a client deposits into a channel paying a relay it learnt the account of over the session.
#[test]
fn wallet_contracts_earnings_and_a_deposit_to_a_paid_relay() {
    let infra = Infra::new(4).expect("infra");

    // Off by default: existing behaviour unchanged, the API says so.
    let plain = FerryUp::start(ferry(), &infra.ferry_args()).expect("plain");
    let out = plain.cli(&["wallet", "--json"]).expect("wallet");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("market is off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(plain.stop().expect("stop plain"));

    // A paid relay from flags.
    let mut args = infra.ferry_args();
    args.extend(
        [
            "--relay-node",
            "--market",
            "--price-per-kib",
            "5",
            "--grace-kib",
            "128",
        ]
        .map(String::from),
    );
    let relay = FerryUp::start(ferry(), &args).expect("relay");
    // A client from the profile's config.toml.
    let profile = tempfile::tempdir().expect("tmp");
    let init = std::process::Command::new(ferry())
        .arg("--profile")
        .arg(profile.path())
        .arg("init")
        .output()
        .expect("init");
    assert!(init.status.success());
    std::fs::write(
        profile.path().join("config.toml"),
        "[market]\nenabled = true\nmax_price_per_kib = 10\n",
    )
    .expect("config.toml");
    let client =
        FerryUp::start_with_profile(ferry(), profile, &infra.ferry_args()).expect("client");

    for up in [&relay, &client] {
        let w = up.json(&["wallet", "--json"]).expect("wallet");
        check_wallet(&w);
        assert_ne!(w["balance"], "0", "the dev ledger funds a fresh account");
        assert_eq!(w["channels"], serde_json::json!([]));
        let c = up.json(&["contracts", "--json"]).expect("contracts");
        assert_eq!(c, serde_json::json!([]));
        let e = up.json(&["earnings", "--json"]).expect("earnings");
        check_earnings(&e);
        assert_eq!(e["total"], "0");
    }

    let (r_pk, c_pk) = (public_key(&relay), public_key(&client));
    let out = client.cli(&["friend", "add", &r_pk]).expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_online(&client, &r_pk);
    wait_online(&relay, &c_pk);

    // The relay's binding (its account) arrives over the session; then the deposit opens a
    // channel paying it.
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
    check_wallet(&w);
    let ch = &w["channels"].as_array().expect("channels")[0];
    assert_eq!(ch["peer"], r_pk.as_str());
    assert_eq!(ch["deposit"], "1000000");
    assert_eq!(ch["cumulative"], "0");
    assert_eq!(ch["claimed"], "0");
    // A second deposit tops the same channel up.
    let w = client
        .json(&["wallet", "deposit", &r_pk, "500", "--json"])
        .expect("top up");
    assert_eq!(w["channels"].as_array().map(Vec::len), Some(1), "{w}");
    assert_eq!(w["channels"][0]["deposit"], "1000500");
    assert_eq!(w["channels"][0]["channel_id"], ch["channel_id"]);

    // `tunnel up --max-price` is checked before anything else happens.
    let out = client
        .cli(&["tunnel", "up", "--max-price", "not-a-number"])
        .expect("tunnel up");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wei"));

    assert!(client.stop().expect("stop client"));
    assert!(relay.stop().expect("stop relay"));
}
