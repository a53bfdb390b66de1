//! Daemon-level market tests: two in-process market endpoints (an exit-like server and a
//! tunnel client) sharing one embedded EVM ledger, messages moved between them as the node task
//! would (`[175][envelope]` lossless packets), ledger work done by [`Market::step`].

use super::*;

const MTU: u64 = 1500;

fn config() -> MarketConfig {
    MarketConfig {
        enabled: true,
        price_per_kib: 1_000_000_000,
        max_price_per_kib: 2_000_000_000,
        contract_data_kib: 100 * 1024,
        contract_time_s: 3600,
        data_renewal_kib: 1024,
        time_renewal_s: 60,
        grace_kib: 64,
        ..MarketConfig::default()
    }
}

const SERVER_SECRET: [u8; 32] = [1; 32];
const CLIENT_SECRET: [u8; 32] = [2; 32];

fn pk(secret: &[u8; 32]) -> PublicKey {
    ferry_crypto::SecretKey::from_bytes(*secret).public_key()
}

/// An IPv4 packet of `len` bytes to `dest`.
fn packet(dest: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[16..20].copy_from_slice(&dest);
    p
}

struct Two {
    now: u64,
    /// A view of the shared ledger (the embedded one itself, or one more JSON-RPC connection).
    ledger: Ledger,
    server: Market,
    client: Market,
    spk: PublicKey,
    cpk: PublicKey,
    /// Drop every voucher the client sends (a client that stops paying).
    withhold_vouchers: bool,
    forwarded: u64,
}

impl Two {
    async fn new(cfg: MarketConfig) -> Self {
        let ledger = Arc::new(EmbeddedEvm::new(EmbeddedConfig::default()).expect("ledger"));
        for s in [&SERVER_SECRET, &CLIENT_SECRET] {
            ledger.fund(AccountKey::from_seed(s).address(), U256::from(DEV_FUNDS));
        }
        let l = Ledger::Embedded(ledger);
        Self::with_ledgers(
            cfg,
            ferry_pay::DEFAULT_START_TIME + 1000,
            l.clone(),
            l.clone(),
            l,
        )
        .await
    }

    /// Server and client on their own ledger handles (accounts funded already); `view` is what
    /// the test checks balances on.
    /// `now`: the start time (unix s; a chain with a wall clock needs the real one).
    async fn with_ledgers(
        cfg: MarketConfig,
        now: u64,
        view: Ledger,
        server: Ledger,
        client: Ledger,
    ) -> Self {
        let ledger = view;
        let (ss, cs) = (SERVER_SECRET, CLIENT_SECRET);
        let server_ledger = server;
        let server = Market::default();
        server.start(MarketCore::new(cfg.clone(), &ss, true, server_ledger), None);
        let client_ledger = client;
        let client = Market::default();
        client.start(MarketCore::new(cfg, &cs, false, client_ledger), None);
        let mut t = Self {
            now,
            ledger,
            server,
            client,
            spk: pk(&ss),
            cpk: pk(&cs),
            withhold_vouchers: false,
            forwarded: 0,
        };
        let (now, spk, cpk) = (t.now, t.spk, t.cpk);
        t.server.with(|c| c.peer_online(now, cpk.0));
        t.client.with(|c| c.peer_online(now, spk.0));
        t.pump().await;
        t
    }

    /// Moves packets both ways and does the ledger work until nothing is left.
    async fn pump(&mut self) {
        for _ in 0..100 {
            let from_server = self.server.step(self.now).await;
            let from_client = self.client.step(self.now).await;
            if from_server.is_empty() && from_client.is_empty() {
                return;
            }
            let now = self.now;
            for (to, data) in from_server {
                assert_eq!(to, self.cpk.0);
                assert_eq!(data[0], MARKET_PACKET_ID);
                self.client.with(|c| c.on_packet(now, self.spk.0, &data));
            }
            for (to, data) in from_client {
                assert_eq!(to, self.spk.0);
                if self.withhold_vouchers && data.get(1) == Some(&0x07) {
                    continue;
                }
                self.server.with(|c| c.on_packet(now, self.cpk.0, &data));
            }
        }
        panic!("market messages kept flowing");
    }

    /// The client sends one packet through the server; `true` if the server forwarded it.
    async fn packet(&mut self, len: usize) -> bool {
        let p = packet([198, 51, 100, 1], len);
        let dest = packet_dest(&p).expect("dest");
        let (now, spk, cpk) = (self.now, self.spk, self.cpk);
        self.client
            .with(|c| c.client_sent(now, spk.0, dest, len as u32));
        let ok = self
            .server
            .with(|c| c.server_forward(now, cpk.0, dest, len as u32))
            .expect("server on");
        if ok {
            self.forwarded += len as u64;
        }
        self.pump().await;
        ok
    }

    async fn tick(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += 1;
            self.pump().await;
        }
    }

    fn server_contract_bytes(&self) -> u64 {
        self.server
            .contracts()
            .expect("on")
            .iter()
            .filter(|k| k.role == "server")
            .map(|k| k.data_used_bytes)
            .sum()
    }

    fn evm(&self) -> &Arc<EmbeddedEvm> {
        match &self.ledger {
            Ledger::Embedded(e) => e,
            Ledger::JsonRpc(_) => panic!("not the embedded ledger"),
        }
    }

    fn client_contract_bytes(&self) -> u64 {
        self.client
            .contracts()
            .expect("on")
            .iter()
            .filter(|k| k.role == "client")
            .map(|k| k.data_used_bytes)
            .sum()
    }
}

/// Negotiate, meter, pay and claim over the real channel contract: both sides count the same
/// bytes, the server is paid exactly what is due and redeems it on the ledger once.
#[tokio::test]
async fn negotiate_meter_pay_and_claim_on_the_embedded_ledger() {
    let cfg = config();
    let price = u128::from(cfg.price_per_kib);
    let mut t = Two::new(cfg).await;
    let sizes = [40usize, 300, 576, 1280, 1400, 1500, 20, 1024];
    let mut total = 0u64;
    for i in 0..400 {
        let len = sizes[i % sizes.len()];
        assert!(t.packet(len).await, "packet {i} forwarded");
        total += len as u64;
        // About 15 KiB per second: well inside the 64 KiB grace, so payment keeps up.
        if i % 20 == 19 {
            t.tick(1).await;
        }
    }
    t.tick(3).await;
    assert_eq!(t.forwarded, total);
    assert_eq!(t.server_contract_bytes(), total, "server meter");
    assert_eq!(t.client_contract_bytes(), total, "client meter");
    let contracts = t.server.contracts().expect("on");
    assert!(
        contracts.iter().all(|k| k.state == "active"),
        "{contracts:?}"
    );
    let due = ferry_market::due(total, price);
    let earnings = t.server.earnings().expect("on");
    assert_eq!(earnings.total, due.to_string(), "paid what is due");
    assert_eq!(earnings.unclaimed, due.to_string());
    let wallet = t.client.wallet().await.expect("wallet");
    assert_eq!(wallet.channels.len(), 1);
    assert_eq!(wallet.channels[0].cumulative, due.to_string());
    assert_eq!(wallet.channels[0].peer, t.spk.to_hex());

    // Claim: the newest voucher is redeemed once, the second claim pays nothing.
    let server_addr = AccountKey::from_seed(&[1u8; 32]).address();
    let before = t.ledger.balance(server_addr).await.expect("balance");
    assert_eq!(t.server.claim_all().await, due);
    let fee = t.evm().last_receipt().expect("the claim's receipt").fee;
    let after = t.ledger.balance(server_addr).await.expect("balance");
    assert_eq!(
        after + fee,
        before + U256::from(due),
        "paid `due`, minus gas"
    );
    assert_eq!(t.server.claim_all().await, 0, "nothing left to claim");
    // The contract itself refuses the same voucher again.
    let (cum, sig) = t
        .server
        .with(|c| {
            let a = c
                .server()
                .expect("server")
                .account(&t.cpk.0)
                .expect("account");
            let (cum, sig) = a.best_voucher.clone().expect("voucher");
            (cum, sig)
        })
        .expect("on");
    let ch = t
        .client
        .with(|c| c.client().account(&t.spk.0).and_then(|a| a.channel))
        .flatten()
        .expect("channel");
    let again = Voucher {
        channel: B256::from(ch.0),
        cumulative: U256::from(cum),
        sig: sig.as_slice().try_into().expect("65 bytes"),
    };
    assert!(
        t.ledger
            .claim(&AccountKey::from_seed(&[1u8; 32]), &again)
            .await
            .is_err(),
        "a voucher cannot be redeemed twice"
    );
    let earnings = t.server.earnings().expect("on");
    assert_eq!(earnings.claimed, due.to_string());
    assert_eq!(earnings.unclaimed, "0");
    let sw = t.server.wallet().await.expect("server wallet");
    assert_eq!(sw.channels.len(), 1);
    assert_eq!(sw.channels[0].claimed, due.to_string());
    assert_eq!(sw.channels[0].peer, t.cpk.to_hex());
}

/// A `ferry chain serve` endpoint in this process (port picked by the OS), served until the
/// test's runtime ends.
async fn chain_server() -> (String, u64) {
    let evm = EmbeddedEvm::new(EmbeddedConfig::default()).expect("chain");
    let server =
        ferry_pay::rpc_server::ChainServer::bind("127.0.0.1:0".parse().expect("addr"), evm)
            .await
            .expect("bind");
    let (url, chain_id) = (server.url(), server.chain_id());
    tokio::spawn(server.serve(std::future::pending()));
    (url, chain_id)
}

fn rpc_config(url: &str, chain_id: u64) -> MarketConfig {
    MarketConfig {
        backend: BackendChoice::JsonRpc,
        rpc_url: url.to_string(),
        chain_id,
        ..config()
    }
}

/// The same negotiate → meter → pay → claim run with both nodes on `backend = "json-rpc"`, each
/// with its own connection to one JSON-RPC chain (as separate processes would be): the channel
/// is opened, the newest voucher redeemed once, and wallet and earnings agree with the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_meter_pay_and_claim_over_json_rpc() {
    let (url, chain_id) = chain_server().await;
    pay_and_claim_over_rpc(
        rpc_config(&url, chain_id),
        ferry_pay::DEFAULT_START_TIME + 1000,
    )
    .await;
}

/// The same on the Hardhat node of `FERRY_HARDHAT_URL` (CI: `.ci/run`; chain id 31337, the
/// contract deployed by a funded dev key, the wall clock as chain time). Skipped with a printed
/// reason when the variable is unset, failed when `FERRY_REQUIRE_HARDHAT=1` asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_meter_pay_and_claim_on_hardhat() {
    let Ok(url) = std::env::var("FERRY_HARDHAT_URL") else {
        assert_ne!(
            std::env::var("FERRY_REQUIRE_HARDHAT").as_deref(),
            Ok("1"),
            "FERRY_REQUIRE_HARDHAT=1 but FERRY_HARDHAT_URL is unset"
        );
        eprintln!("SKIP negotiate_meter_pay_and_claim_on_hardhat: FERRY_HARDHAT_URL unset");
        return;
    };
    // A fresh deployer (funded with `hardhat_setBalance`) deploys a fresh hub for this run.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = [0x5au8; 32];
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    let deployer = AccountKey::from_seed(&seed);
    hardhat_set_balance(&url, deployer.address(), U256::from(DEV_FUNDS)).await;
    let d = JsonRpcEvm::connect(&url, None, None, Some(&deployer))
        .await
        .expect("connect to hardhat and deploy UniChannels");
    let mut cfg = rpc_config(&url, d.chain_id());
    cfg.hub = Some(format!("{:#x}", d.hub()));
    pay_and_claim_over_rpc(cfg, unix_now()).await;
}

/// `hardhat_setBalance` as a bare HTTP/1.1 request (before any [`JsonRpcEvm`] can connect:
/// without a hub it needs a funded deployer).
async fn hardhat_set_balance(url: &str, who: Address, amount: U256) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "hardhat_setBalance",
        "params": [who, format!("{amount:#x}")]})
    .to_string();
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .expect("connect to hardhat");
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    assert!(resp.contains("\"result\""), "hardhat_setBalance: {resp}");
}

async fn pay_and_claim_over_rpc(cfg: MarketConfig, now: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let open = || Ledger::open(&cfg, dir.path());
    let (view, sl, cl) = (
        open().await.expect("view"),
        open().await.expect("server ledger"),
        open().await.expect("client ledger"),
    );
    assert!(
        !dir.path().join("ledger.json").exists(),
        "no embedded ledger file"
    );
    let Ledger::JsonRpc(rpc) = &view else {
        panic!("json-rpc backend expected")
    };
    for s in [&SERVER_SECRET, &CLIENT_SECRET] {
        rpc.dev_fund(AccountKey::from_seed(s).address(), U256::from(DEV_FUNDS))
            .await
            .expect("fund");
    }
    let price = u128::from(cfg.price_per_kib);
    let mut t = Two::with_ledgers(cfg, now, view.clone(), sl.clone(), cl).await;
    let mut total = 0u64;
    for i in 0..200 {
        let len = [40usize, 300, 1400, 1500][i % 4];
        assert!(t.packet(len).await, "packet {i} forwarded");
        total += len as u64;
        if i % 20 == 19 {
            t.tick(1).await;
        }
    }
    t.tick(3).await;
    assert_eq!(t.server_contract_bytes(), total);
    assert_eq!(t.client_contract_bytes(), total);
    let due = ferry_market::due(total, price);
    assert_eq!(t.server.earnings().expect("on").total, due.to_string());

    // The channel is on the chain, opened by the client for the server.
    let wallet = t.client.wallet().await.expect("wallet");
    assert_eq!(wallet.channels.len(), 1);
    assert_eq!(wallet.channels[0].cumulative, due.to_string());
    let client_addr = AccountKey::from_seed(&CLIENT_SECRET).address();
    let server_addr = AccountKey::from_seed(&SERVER_SECRET).address();
    assert_eq!(
        wallet.balance,
        view.balance(client_addr)
            .await
            .expect("balance")
            .to_string()
    );
    let ch: B256 = wallet.channels[0].channel_id.parse().expect("channel id");
    let st = view.channel(ch).await.expect("rpc").expect("channel");
    assert_eq!(st.sender, client_addr);
    assert_eq!(st.receiver, server_addr);
    assert_eq!(wallet.channels[0].deposit, st.deposit.to_string());
    assert!(st.claimed.is_zero());

    // Claim once: the chain pays `due` (minus gas), a second claim pays nothing.
    let before = view.balance(server_addr).await.expect("balance");
    assert_eq!(t.server.claim_all().await, due);
    let Ledger::JsonRpc(srpc) = &sl else {
        panic!("json-rpc")
    };
    let fee = srpc.last_receipt().expect("the claim's receipt").fee;
    let after = view.balance(server_addr).await.expect("balance");
    assert_eq!(
        after + fee,
        before + U256::from(due),
        "paid `due`, minus gas"
    );
    assert_eq!(t.server.claim_all().await, 0, "nothing left to claim");
    let st = view.channel(ch).await.expect("rpc").expect("channel");
    assert_eq!(st.claimed, U256::from(due));
    let e = t.server.earnings().expect("on");
    assert_eq!(
        (e.claimed.as_str(), e.unclaimed.as_str()),
        (due.to_string().as_str(), "0")
    );
    let sw = t.server.wallet().await.expect("server wallet");
    assert_eq!(sw.balance, after.to_string());
    assert_eq!(sw.channels[0].claimed, due.to_string());
    assert_eq!(
        t.client.wallet().await.expect("wallet").channels[0].claimed,
        due.to_string(),
        "the client sees the claim on the chain"
    );
}

/// `backend = "json-rpc"` fails at start with a message naming the endpoint and the fix: nothing
/// listening, the wrong chain id, a hub without code, a malformed hub.
#[tokio::test]
async fn json_rpc_backend_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tmp");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = format!("http://127.0.0.1:{closed}");
    let e = Ledger::open(&rpc_config(&down, 5), dir.path())
        .await
        .expect_err("nothing listens")
        .to_string();
    assert!(e.contains(&down) && e.contains("ferry chain serve"), "{e}");

    let (url, chain_id) = chain_server().await;
    let e = Ledger::open(&rpc_config(&url, chain_id + 1), dir.path())
        .await
        .expect_err("wrong chain")
        .to_string();
    assert!(e.contains("chain id") && e.contains("--chain-id"), "{e}");

    let mut c = rpc_config(&url, chain_id);
    c.hub = Some(format!("{:#x}", Address::repeat_byte(7)));
    let e = Ledger::open(&c, dir.path())
        .await
        .expect_err("no code at hub")
        .to_string();
    assert!(e.contains("no contract at hub"), "{e}");
    c.hub = Some("0x1234".into());
    let e = Ledger::open(&c, dir.path())
        .await
        .expect_err("bad hub")
        .to_string();
    assert!(e.contains("hub"), "{e}");

    let ok = Ledger::open(&rpc_config(&url, chain_id), dir.path())
        .await
        .expect("connects");
    assert_eq!(ok.info().chain_id, chain_id);
}

/// A client that stops paying is cut off after at most one grace allowance plus one MTU; paying
/// again resumes forwarding.
#[tokio::test]
async fn a_client_that_stops_paying_is_cut_off_after_one_grace_plus_one_mtu() {
    let cfg = config();
    let grace_bytes = cfg.grace_kib * 1024;
    let mut t = Two::new(cfg).await;
    for i in 0..100 {
        assert!(t.packet(1400).await);
        if i % 20 == 19 {
            t.tick(1).await;
        }
    }
    t.tick(3).await;
    let paid_bytes = t.forwarded;
    let e = t.server.earnings().expect("on");
    assert_eq!(
        e.total,
        ferry_market::due(paid_bytes, 1_000_000_000).to_string()
    );
    t.withhold_vouchers = true;
    let mut dropped = 0;
    for i in 0..600 {
        if !t.packet(1400).await {
            dropped += 1;
        }
        if i % 50 == 0 {
            t.tick(1).await;
        }
    }
    let unpaid = t.forwarded - paid_bytes;
    assert!(
        unpaid <= grace_bytes + MTU,
        "forwarded {unpaid} unpaid bytes, grace {grace_bytes}"
    );
    assert!(unpaid + MTU > grace_bytes, "the grace was usable");
    assert!(dropped > 400, "dropped {dropped}");
    assert_eq!(
        t.server.with(|c| c.gated_packets).expect("on"),
        dropped as u64
    );
    t.withhold_vouchers = false;
    t.tick(ferry_market::server::PAYMENT_REMINDER_S + 1).await;
    assert!(t.packet(1400).await, "paying again resumes forwarding");
}

/// The server's accounts survive a restart through the state file (the credit line is
/// per peer and persisted), and the config table parses with defaults and overrides.
#[tokio::test]
async fn server_state_survives_a_restart_and_config_parses() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config();
    let mut t = Two::new(cfg.clone()).await;
    for _ in 0..50 {
        t.packet(1000).await;
    }
    t.tick(2).await;
    let before = t.server.earnings().expect("on");
    *lock(&t.server.dir) = Some(dir.path().to_path_buf());
    t.server.with(|c| c.dirty = true);
    t.server.save();
    let restarted = Market::default();
    restarted.start(
        MarketCore::new(cfg, &[1u8; 32], true, t.ledger.clone()),
        Some(dir.path().to_path_buf()),
    );
    assert_eq!(restarted.earnings().expect("on"), before);
    assert_eq!(
        restarted.contracts().expect("on").len(),
        t.server.contracts().expect("on").len()
    );

    let c = MarketConfig::parse(
        "[market]\nenabled = true\nprice_per_kib = 5\nbackend = \"json-rpc\"\n[other]\nx = 1\n",
    )
    .expect("parses");
    assert!(c.enabled);
    assert_eq!(c.price_per_kib, 5);
    assert_eq!(c.backend, BackendChoice::JsonRpc);
    assert_eq!(c.grace_kib, MarketConfig::default().grace_kib);
    assert!(!MarketConfig::parse("").expect("empty").enabled);
    assert!(MarketConfig::parse("[market]\nbogus = 1\n").is_err());
    let mut c = MarketConfig::default();
    c.apply(&MarketFlags {
        enabled: Some(true),
        grace_kib: Some(7),
        ..MarketFlags::default()
    });
    assert!(c.enabled);
    assert_eq!(c.grace_kib, 7);
}

/// The node task's event handler of the session test: market packets and friend connections
/// to the market, as [`crate::chat::ChatHandler`] does.
struct MarketEvents(Market);

impl ferry_net::EventHandler for MarketEvents {
    fn on_event(
        &mut self,
        node: &mut ferry_proto::node::Node,
        now: std::time::Instant,
        event: ferry_proto::node::NodeEvent,
    ) {
        use ferry_proto::node::{Connection, NodeEvent};
        match event {
            NodeEvent::FriendConnection {
                public_key,
                connection,
            } => self
                .0
                .peer_connection(&public_key, connection != Connection::None),
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&MARKET_PACKET_ID) => {
                self.0.on_packet(&public_key, &data);
                self.0.flush(node, now);
            }
            _ => {}
        }
    }
}

/// Two real nodes on loopback (plus two DHT helpers), friends over net_crypto; their markets
/// (a server and a client, one shared embedded ledger) talk by lossless packets 175 through
/// the `ferry up` driver; the client "sends" 1000-byte packets through the server for 3 s:
/// both sides meter the same bytes, the server is paid exactly what is due and claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_pay_over_real_sessions_through_the_driver() {
    use ferry_net::{NodeOptions, PortSpec, bind_udp, spawn_node};
    let ledger = Arc::new(EmbeddedEvm::new(EmbeddedConfig::default()).expect("ledger"));
    let secrets = [[11u8; 32], [12u8; 32]];
    let markets = [Market::default(), Market::default()];
    let mut nodes = Vec::new();
    for i in 0..4 {
        let socket = bind_udp(
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            PortSpec::Exact(0),
        )
        .expect("udp");
        let options = NodeOptions {
            dht: ferry_proto::dht::DhtConfig {
                lan_discovery: false,
                ..ferry_proto::dht::DhtConfig::default()
            },
            real_keys: (i < 2).then(|| {
                ferry_crypto::KeyPair::from_secret(ferry_crypto::SecretKey::from_bytes(secrets[i]))
            }),
            ..NodeOptions::default()
        };
        let (h, _join) = if i < 2 {
            spawn_node(socket, options, MarketEvents(markets[i].clone())).expect("node")
        } else {
            spawn_node(socket, options, ferry_net::DhtEvents(None)).expect("node")
        };
        let st = h.status().await.expect("status");
        nodes.push((h, st.local_addr, st.dht_public_key));
    }
    for i in 1..4 {
        let (a, k) = (nodes[0].1, nodes[0].2);
        nodes[i].0.bootstrap(a, k).await.expect("bootstrap");
        let (a, k) = (nodes[i - 1].1, nodes[i - 1].2);
        nodes[i].0.bootstrap(a, k).await.expect("bootstrap");
    }
    let (cpk, spk) = (pk(&secrets[0]), pk(&secrets[1]));
    let mut cfg = config();
    cfg.grace_kib = 1024;
    // Node 1 serves (an exit), node 0 is its client.
    for (i, serve) in [(0usize, false), (1, true)] {
        start_with_ledger(
            &markets[i],
            cfg.clone(),
            None,
            &secrets[i],
            serve,
            nodes[i].0.clone(),
            Ledger::Embedded(ledger.clone()),
        )
        .await;
    }
    nodes[0]
        .0
        .call(move |n, now| n.add_friend_norequest(now, spk))
        .await
        .expect("call")
        .expect("add");
    nodes[1]
        .0
        .call(move |n, now| n.add_friend_norequest(now, cpk))
        .await
        .expect("call")
        .expect("add");
    // The server's binding reaches the client once the session is up.
    let start = std::time::Instant::now();
    loop {
        let bound = markets[0]
            .with(|c| {
                c.client()
                    .account(&spk.0)
                    .is_some_and(|a| a.binding.is_some())
            })
            .expect("on");
        if bound {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "no binding over the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pkt = packet([198, 51, 100, 7], 1000);
    let mut total = 0u64;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        for _ in 0..10 {
            markets[0].client_sent(&spk, &pkt);
            assert!(markets[1].server_forward(&cpk, &pkt), "forwarded");
            total += pkt.len() as u64;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let due = ferry_market::due(total, u128::from(cfg.price_per_kib));
    let start = std::time::Instant::now();
    loop {
        let paid = markets[1].earnings().expect("on").total;
        if paid == due.to_string() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "paid {paid}, due {due}; server {:?}",
            markets[1].contracts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = |m: &Market, role: &str| -> u64 {
        m.contracts()
            .expect("on")
            .iter()
            .filter(|k| k.role == role)
            .map(|k| k.data_used_bytes)
            .sum()
    };
    assert_eq!(used(&markets[1], "server"), total);
    assert_eq!(used(&markets[0], "client"), total);
    assert_eq!(markets[1].claim_all().await, due);
    let w = markets[1].wallet().await.expect("wallet");
    assert_eq!(w.channels[0].claimed, due.to_string());
    for (h, _, _) in &nodes {
        h.shutdown().await;
    }
}

/// Client → relay → exit, each on its own market endpoint over one embedded ledger, market
/// messages routed by key as the node tasks would; cells are metered with the circuit hooks
/// ([`MarketCore::circuit_forward`] and the client's [`CIRCUIT_DEST`] meter).
struct Three {
    now: u64,
    nodes: Vec<(PublicKey, Market)>,
}

const RELAY_SECRET: [u8; 32] = [3; 32];
const EXIT_SECRET: [u8; 32] = [4; 32];

impl Three {
    /// `exit_serves`: the far end runs the server role (else it is a mesh peer off the
    /// market: no binding, no receipts).
    async fn new(exit_serves: bool) -> Self {
        let ledger = Arc::new(EmbeddedEvm::new(EmbeddedConfig::default()).expect("ledger"));
        let mut nodes = Vec::new();
        for (s, serve) in [
            (CLIENT_SECRET, false),
            (RELAY_SECRET, true),
            (EXIT_SECRET, exit_serves),
        ] {
            ledger.fund(AccountKey::from_seed(&s).address(), U256::from(DEV_FUNDS));
            let m = Market::default();
            m.start(
                MarketCore::new(config(), &s, serve, Ledger::Embedded(Arc::clone(&ledger))),
                None,
            );
            nodes.push((pk(&s), m));
        }
        let mut t = Self {
            now: ferry_pay::DEFAULT_START_TIME + 1000,
            nodes,
        };
        // Sessions client–relay and relay–exit.
        let now = t.now;
        for (a, b) in [(0, 1), (1, 2)] {
            let (ka, kb) = (t.nodes[a].0, t.nodes[b].0);
            t.nodes[a].1.with(|c| c.peer_online(now, kb.0));
            t.nodes[b].1.with(|c| c.peer_online(now, ka.0));
        }
        t.pump().await;
        t
    }

    async fn pump(&mut self) {
        for _ in 0..100 {
            let mut any = false;
            for i in 0..self.nodes.len() {
                let from = self.nodes[i].0;
                for (to, data) in self.nodes[i].1.step(self.now).await {
                    any = true;
                    let (_, m) = self
                        .nodes
                        .iter()
                        .find(|(k, _)| k.0 == to)
                        .expect("a neighbour");
                    m.with(|c| c.on_packet(self.now, from.0, &data));
                }
            }
            if !any {
                return;
            }
        }
        panic!("market messages kept flowing");
    }

    /// One upstream cell of `len` bytes: the client sends it to the relay, which meters it and,
    /// unless `black_hole`, forwards it to the exit, where the circuit ends. `false`: the relay
    /// gated it.
    async fn cell(&mut self, len: u32, black_hole: bool) -> bool {
        let [(c, cm), (r, rm), (_, em)] = &self.nodes[..] else {
            panic!("three nodes")
        };
        let (now, e) = (self.now, self.nodes[2].0);
        cm.with(|x| x.client_sent(now, r.0, CIRCUIT_DEST, len));
        let ok = rm
            .with(|x| x.circuit_forward(now, c.0, Some(e.0), len))
            .expect("on");
        if ok && !black_hole {
            rm.with(|x| x.client_sent(now, e.0, CIRCUIT_DEST, len));
            let ok = em
                .with(|x| x.circuit_forward(now, r.0, None, len))
                .expect("on");
            assert!(ok, "the relay pays the exit");
        }
        self.pump().await;
        ok
    }

    fn earned(&self, i: usize) -> u128 {
        self.nodes[i]
            .1
            .earnings()
            .expect("on")
            .total
            .parse()
            .expect("wei")
    }
}

/// Chained receipts: a relay that forwards the client's cells is paid for them exactly as the
/// exit confirms them, and pays the exit the same bytes; a relay that forwards nothing (its
/// next hop confirms nothing) is paid nothing for them.
#[tokio::test]
async fn a_relay_is_paid_for_upstream_cells_only_as_its_next_hop_confirms_them() {
    let price = u128::from(config().price_per_kib);
    for black_hole in [false, true] {
        let mut t = Three::new(true).await;
        let mut total = 0u64;
        for i in 0..150u32 {
            let len = 500 + (i % 7) * 120;
            if t.cell(len, black_hole).await {
                total += u64::from(len);
            } else {
                assert!(black_hole, "cell {i} gated");
            }
            // About 8 KiB per second: receipts take a second per hop to come back, so the
            // payment for upstream bytes lags by about two seconds, well inside the grace.
            if i % 10 == 9 {
                t.now += 1;
                t.pump().await;
            }
        }
        for _ in 0..4 {
            t.now += 1;
            t.pump().await;
        }
        let relay_metered = t.nodes[1]
            .1
            .contracts()
            .expect("on")
            .iter()
            .filter(|k| k.role == "server")
            .map(|k| k.data_used_bytes)
            .sum::<u64>();
        assert_eq!(relay_metered, total, "the relay meters what it received");
        if black_hole {
            assert_eq!(
                t.earned(1),
                0,
                "a relay that forwards nothing earns nothing"
            );
            // ... and stops carrying the client's cells after one credit line.
            let grace = config().grace_kib * 1024;
            assert!(
                total <= grace && total + 2 * MTU > grace,
                "carried {total} B unpaid"
            );
            assert_eq!(t.earned(2), 0);
        } else {
            let due = ferry_market::due(total, price);
            assert_eq!(t.earned(1), due, "relay paid for every confirmed byte");
            assert_eq!(t.earned(2), due, "exit paid by the relay");
        }
        // Neighbours only: the exit never dealt with the client.
        let cpk = t.nodes[0].0.to_hex();
        assert!(
            t.nodes[2]
                .1
                .contracts()
                .expect("on")
                .iter()
                .all(|k| k.peer != cpk)
        );
    }
}

/// A circuit end on the market without the server role (a mesh peer ending an identified
/// circuit: it proposes nothing and is paid nothing) still receipts what it receives, so the
/// relay before it is paid for the upstream cells.
#[tokio::test]
async fn an_end_without_the_server_role_receipts_to_the_relay() {
    let price = u128::from(config().price_per_kib);
    let mut t = Three::new(false).await;
    let mut total = 0u64;
    for i in 0..60u32 {
        assert!(t.cell(700, false).await, "cell {i} gated");
        total += 700;
        if i % 10 == 9 {
            t.now += 1;
            t.pump().await;
        }
    }
    for _ in 0..3 {
        t.now += 1;
        t.pump().await;
    }
    assert_eq!(t.earned(1), ferry_market::due(total, price));
    assert_eq!(t.earned(2), 0, "the end is not on the market");
}

/// Once the far end's own counts come back through the circuit, the client pays its first
/// relay for upstream cells only as far as they confirm, whatever the relay receipts.
#[tokio::test]
async fn the_far_ends_count_caps_what_the_client_pays_its_first_relay() {
    let price = u128::from(config().price_per_kib);
    let mut t = Three::new(true).await;
    let rpk = t.nodes[1].0;
    let mut total = 0u64;
    for i in 0..40u32 {
        assert!(t.cell(800, false).await, "cell {i} gated");
        total += 800;
        if i % 10 == 9 {
            t.now += 1;
            t.pump().await;
        }
    }
    // The far end reports half (say the relay dropped the rest after receipting it).
    let half = total / 2;
    let now = t.now;
    t.nodes[0]
        .1
        .with(|c| c.circuit_confirmed(now, rpk.0, 7, half));
    // An older count and a replay change nothing.
    t.nodes[0]
        .1
        .with(|c| c.circuit_confirmed(now, rpk.0, 7, half / 2));
    for _ in 0..3 {
        t.now += 1;
        t.pump().await;
    }
    let wallet = t.nodes[0].1.wallet().await.expect("wallet");
    let paid: u128 = wallet.channels[0].cumulative.parse().expect("wei");
    // Vouchers already sent on the relay's receipts stay paid; nothing more until the far end
    // confirms more.
    let before = t.earned(1);
    assert_eq!(paid, before);
    for i in 0..20u32 {
        assert!(t.cell(800, false).await, "cell {i} gated");
    }
    for _ in 0..3 {
        t.now += 1;
        t.pump().await;
    }
    assert_eq!(t.earned(1), before, "unconfirmed by the far end: unpaid");
    // The far end confirms everything sent so far: paid in full.
    let all = total + 20 * 800;
    let now = t.now;
    t.nodes[0]
        .1
        .with(|c| c.circuit_confirmed(now, rpk.0, 7, all));
    for _ in 0..3 {
        t.now += 1;
        t.pump().await;
    }
    assert_eq!(t.earned(1), ferry_market::due(all, price));
}
