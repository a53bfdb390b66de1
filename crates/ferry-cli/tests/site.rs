//! Broadcast sites between real `ferry up` processes on loopback (issue 10 item 4): a site
//! published under a username is fetched back by name, another user cannot publish under the
//! name, and a real browser (headless Chromium) opens it through a node's gateway, running the
//! site's script. The fetch also checks credits (issue 10 item 6): the fetcher credits the
//! provider, and the provider holds the fetcher's signed receipt. Every daemon runs with `--no-default-bootstrap --no-lan --bind 127.0.0.1`;
//! Chromium runs with a dead proxy on 127.0.0.1:9 for everything but loopback, so it sends
//! nothing off this host. Processes are stopped by PID.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra, free_tcp_port};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(90);

fn wait_capable(up: &FerryUp, n: u64) {
    up.wait_store_capable(n, STEP).expect("store-capable peers");
}

/// Runs a CLI command until it succeeds (the DHT may still be converging); returns its JSON.
fn retry_json(up: &FerryUp, args: &[&str]) -> serde_json::Value {
    up.retry_json(args, STEP).expect("command")
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The page's DOM after its scripts ran, as headless Chromium sees it.
fn browse(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().expect("browser profile");
    let mut child = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            // Everything but loopback goes to a closed port on loopback.
            "--proxy-server=http://127.0.0.1:9",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn site_published_under_a_name_opens_in_a_browser_through_the_gateway() {
    let infra = Infra::new(2).expect("infra");
    let port = free_tcp_port();
    let a = FerryUp::start(ferry(), &infra.ferry_args()).expect("a");
    let mut b_args = infra.ferry_args();
    b_args.extend(["--gateway".to_string(), port.to_string()]);
    let b = FerryUp::start(ferry(), &b_args).expect("b");
    let c = FerryUp::start(ferry(), &infra.ferry_args()).expect("c");
    for n in [&a, &b, &c] {
        wait_capable(n, 2);
    }

    // The site: a page whose script (a second file, fetched through the gateway) rewrites it.
    let src = tempfile::tempdir().expect("src");
    let site = src.path().join("mysite");
    std::fs::create_dir_all(site.join("js")).expect("dir");
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><html><head><title>ferry site</title></head><body>\
         <p id=\"msg\">static text</p><script src=\"js/app.js\"></script></body></html>",
    )
    .expect("index");
    std::fs::write(
        site.join("js/app.js"),
        "document.getElementById('msg').textContent = 'rendered by app.js over ferry';",
    )
    .expect("js");

    let started = Instant::now();
    retry_json(&a, &["name", "register", "mysite", "--json"]);
    let site_path = site.to_str().expect("utf-8 path");
    let published = retry_json(
        &a,
        &["site", "publish", site_path, "--name", "mysite", "--json"],
    );
    eprintln!("register + publish: {:?}: {published}", started.elapsed());
    let id = published["id"].as_str().expect("id").to_string();
    assert_eq!(published["name"], "mysite");

    // Someone else cannot publish under the name.
    let other = src.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    std::fs::write(other.join("index.html"), "defaced").expect("index");
    let out = c
        .cli(&[
            "site",
            "publish",
            other.to_str().expect("utf-8"),
            "--name",
            "mysite",
            "--json",
        ])
        .expect("c publish");
    assert!(!out.status.success(), "c published under a's name");

    // By name: resolve and fetch.
    let r = retry_json(&b, &["site", "get", "@mysite", "--resolve-only", "--json"]);
    assert_eq!(r["id"], id.as_str(), "{r}");
    assert_eq!(r["fingerprint"], published["fingerprint"]);
    let dest = tempfile::tempdir().expect("dest");
    let got = retry_json(
        &c,
        &[
            "site",
            "get",
            "mysite",
            "--to",
            dest.path().to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(got["site"]["id"], id.as_str(), "{got}");
    for f in ["index.html", "js/app.js"] {
        assert_eq!(
            std::fs::read(dest.path().join("mysite").join(f)).expect("fetched file"),
            std::fs::read(site.join(f)).expect("source file"),
            "{f}"
        );
    }

    // Credits (issue 10 item 6): c credits a with what a served it, and a holds c's signed
    // receipt for it.
    let a_pk = a.json(&["id", "--json"]).expect("id")["public_key"]
        .as_str()
        .expect("pk")
        .to_string();
    let c_pk = c.json(&["id", "--json"]).expect("id")["public_key"]
        .as_str()
        .expect("pk")
        .to_string();
    let site_bytes: u64 = ["index.html", "js/app.js"]
        .iter()
        .map(|f| std::fs::metadata(site.join(f)).expect("size").len())
        .sum();
    let account = |up: &FerryUp, peer: &str| -> serde_json::Value {
        up.json(&["credits", "--json"])
            .expect("credits")
            .as_array()
            .expect("array")
            .iter()
            .find(|x| {
                x["peer"]
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case(peer))
            })
            .cloned()
            .unwrap_or_default()
    };
    let got = account(&c, &a_pk);
    assert!(
        got["received_bytes"].as_u64().unwrap_or(0) >= site_bytes,
        "c's credit for a: {got}"
    );
    let start = Instant::now();
    loop {
        let held = account(&a, &c_pk);
        if held["receipted_bytes"].as_u64().unwrap_or(0) >= site_bytes {
            assert!(
                held["served_bytes"].as_u64().unwrap_or(0) >= site_bytes,
                "{held}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no receipt from c at a: {held}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Through the gateway, in a real browser.
    let Some(browser) = chromium() else {
        eprintln!("SKIP browser part: no chromium (CI installs it)");
        for n in [a, b, c] {
            assert!(n.stop().expect("stop"));
        }
        return;
    };
    let url = format!("http://127.0.0.1:{port}/site/mysite/");
    let started = Instant::now();
    let dom = browse(browser, &url);
    eprintln!("chromium opened {url} in {:?}", started.elapsed());
    assert!(
        dom.contains("rendered by app.js over ferry"),
        "the page's script did not run: {dom}\n{}",
        b.stderr.snapshot().join("\n")
    );
    assert!(dom.contains("<title>ferry site</title>"), "{dom}");
    // Unknown names and files are clear 404s.
    let dom = browse(
        browser,
        &format!("http://127.0.0.1:{port}/site/mysite/nope.html"),
    );
    assert!(dom.contains("not in site"), "{dom}");
    for n in [a, b, c] {
        assert!(n.stop().expect("stop"));
    }
}
