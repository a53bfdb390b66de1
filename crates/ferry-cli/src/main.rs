//! `ferry`: the one binary. `init`, `id` and `up` work on the profile directly (`up` runs the
//! daemon in the foreground); every other command is a client of the daemon's control API on
//! `<profile>/ferry.sock`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_api::{BootstrapRequest, Client, DhtNode, LookupRequest, LookupResult, Status};
use ferry_daemon::bootstrap::BootstrapNode;
use ferry_daemon::devnet::{DevnetOptions, run_devnet};
use ferry_daemon::profile;
use ferry_daemon::up::{UpOptions, run_up};

mod chain;
mod channel;
mod chat;
mod content;
mod data;
mod devnet_data;
mod devnet_netns;
mod files;
mod market;
mod pins;
mod sim_store;
mod sim_swarm;
mod stream;

/// ferry: a peer-to-peer encrypted mesh network that speaks the Tox protocol.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    /// Profile directory (default: $XDG_DATA_HOME/ferry).
    #[arg(long, global = true, env = "FERRY_PROFILE", value_name = "DIR")]
    profile: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

fn ferry_relay_default_rate() -> u32 {
    ferry_daemon::up::DEFAULT_RELAY_LINK_RATE
}

/// `ferry relay ...`.
#[derive(Subcommand, Debug)]
enum RelayCommand {
    /// Clients, links and bytes relayed by this node's TCP relay.
    Status {
        /// JSON: {"enabled", "public_key", "ports", "clients", "links", "bytes_relayed", …}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once; `Up` carries every daemon flag
enum Command {
    /// Create a profile (long-term key pair and nospam) and print its Tox ID.
    Init {
        /// Replace an existing profile (its identity is lost).
        #[arg(long)]
        force: bool,
    },
    /// Print this profile's Tox ID.
    Id {
        /// JSON: {"tox_id", "public_key"}.
        #[arg(long)]
        json: bool,
    },
    /// Run the node in the foreground until Ctrl-C / SIGTERM.
    Up {
        /// UDP port (default: first free of 33445..=33545).
        #[arg(long, value_name = "N")]
        udp_port: Option<u16>,
        /// Bootstrap node, IP:PORT:DHT_PUBLIC_KEY_HEX (repeatable; IPv6 as `[IP]:PORT:KEY`).
        #[arg(long = "bootstrap", value_name = "IP:PORT:KEY")]
        bootstrap: Vec<BootstrapNode>,
        /// Do not use the embedded list of public Tox bootstrap nodes.
        #[arg(long)]
        no_default_bootstrap: bool,
        /// Turn LAN discovery off.
        #[arg(long)]
        no_lan: bool,
        /// Address to bind the UDP socket to (default :: — all IPv4 and IPv6 addresses).
        #[arg(long, value_name = "IP", default_value = "::")]
        bind: IpAddr,
        /// Offer a Tox TCP relay on these TCP ports (bound at --bind); its key is the DHT key.
        #[arg(long = "tcp-relay", value_name = "PORT[,PORT]", value_delimiter = ',')]
        tcp_relay: Vec<u16>,
        /// Bandwidth per relayed link, bytes/s each direction (0 = unlimited).
        #[arg(long, value_name = "BYTES", default_value_t = ferry_relay_default_rate())]
        relay_link_rate: u32,
        /// Test hook: append what the relay can read of the payloads it forwards to this file.
        #[arg(long, value_name = "FILE", hide = true)]
        relay_tap_file: Option<PathBuf>,
        /// A TCP relay to use, IP:PORT:PUBLIC_KEY_HEX (repeatable; as `tox_add_tcp_relay`): kept
        /// connected, announced to friends, used when no direct UDP path works.
        #[arg(long = "relay-peer", value_name = "IP:PORT:KEY")]
        relay_peer: Vec<BootstrapNode>,
        /// Send no UDP at all (networks that block it): friends only through --relay-peer relays.
        #[arg(long)]
        no_udp: bool,
        /// Do not try the embedded public bootstrap nodes as TCP relays (they are by default,
        /// after every --relay-peer).
        #[arg(long)]
        no_bootstrap_relays: bool,
        /// Be an exit node: forward friends' tunnel traffic (IPv4 and IPv6) out of --uplink with
        /// NAT (iptables/ip6tables chains FERRY-EXIT-<udp port>, removed on exit), hand out
        /// client addresses (IPv4 from 100.64.0.0/10; IPv6 = the client's mesh address).
        /// Nothing arriving on the uplink enters the mesh unless it answers a client's flow.
        /// A service node like --relay-node: clients befriend it by `ferry friend add KEY`.
        #[arg(long, requires = "uplink")]
        exit_node: bool,
        /// The exit's uplink interface (with --exit-node).
        #[arg(long, value_name = "IFACE", requires = "exit_node")]
        uplink: Option<String>,
        /// Exit policy (TOML; with --exit-node). Without it every destination is allowed; with
        /// it only what an [[allow]] rule lists: `cidr = "10.0.0.0/8"`, optional
        /// `protocol = "tcp"|"udp"|"icmp"|"any"`, optional `ports = "80,443,8000-8100"`
        /// (destination ports). Drops are counted in `ferry tunnel status`.
        #[arg(long, value_name = "FILE", requires = "exit_node")]
        exit_policy: Option<PathBuf>,
        /// Serve as a tunnel relay for multi-hop circuits (`ferry tunnel up --via`): this node
        /// learns only each circuit's previous and next hop. A service node: it accepts every
        /// friend request, with a nospam anyone can derive from its public key
        /// (`ferry friend add PUBLIC_KEY` reaches it).
        #[arg(long)]
        relay_node: bool,
        #[command(flatten)]
        market: market::MarketArgs,
        /// Serve broadcast sites to browsers at http://127.0.0.1:PORT/site/NAME/ (loopback
        /// only; a site version this node lacks is fetched on first visit).
        #[arg(long, value_name = "PORT")]
        gateway: Option<u16>,
        /// Hold pinned content for publishers (as `[content] store_for_others = true`; quota
        /// `[content] replica_quota_mib`, default 1024).
        #[arg(long)]
        store_content: bool,
    },
    /// Paid forwarding: this node's account, balance and payment channels.
    Wallet {
        #[command(subcommand)]
        command: Option<market::WalletCommand>,
        /// JSON: {"address", "balance", "channels": [{"peer", "channel_id", "deposit",
        /// "cumulative", "claimed"}]} (amounts: decimal strings, wei).
        #[arg(long)]
        json: bool,
    },
    /// Paid forwarding: contracts as client and as server.
    Contracts {
        /// JSON: [{"peer", "role", "price_per_kib", "data_used_bytes", "data_limit_bytes",
        /// "expires_at", "paid", "owed", "state"}].
        #[arg(long)]
        json: bool,
    },
    /// Paid forwarding: what this node earned as a relay or exit.
    Earnings {
        /// JSON: {"total", "claimed", "unclaimed"} (wei).
        #[arg(long)]
        json: bool,
    },
    /// TCP relay server commands.
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// IP tunnel over friends' sessions: `up`, `down`, `status`.
    Tunnel {
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// Ask the running daemon to stop.
    Stop,
    /// Show the running node's status.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Publish a file or directory as content: prints its content id (the node serves it and
    /// announces itself as a provider in the DHT).
    Publish {
        /// File or directory.
        path: PathBuf,
        /// JSON: {"id", "name", "files", "bytes", "announced"}.
        #[arg(long)]
        json: bool,
        /// Also ask the closest storers (nodes with `[content] store_for_others = true`) to
        /// hold it: ≥ 3 replicas kept and repaired (see `ferry pins`).
        #[arg(long)]
        pin: bool,
    },
    /// Pinned content: what this node published with `--pin` (the pins that accepted) and
    /// the replicas it holds for others (with the holder set it sees live).
    Pins {
        /// JSON: [{"id", "role" ("publisher"|"pin"|"extra"), "holders" (keys), "fetched"}].
        #[arg(long)]
        json: bool,
    },
    /// Stop pinning content: a holder releases its replica; a publisher forgets the pin.
    Unpin {
        /// The content id (64 hex digits).
        id: String,
    },
    /// Fetch content by id from every node that has it, verifying as it streams; writes the
    /// file or directory under its published name into DIR.
    Fetch {
        /// The content id (64 hex digits).
        id: String,
        /// Directory to write into (default: the current directory).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// JSON summary: {"path", "bytes", "providers_used", "providers_dropped",
        /// "providers_known", "seconds", "rate" (bytes/s)}.
        #[arg(long)]
        json: bool,
    },
    /// Credits: what each peer contributed to this node (verified content bytes it served us)
    /// and what we served it; a busy node serves peers with more credit first.
    Credits {
        /// JSON: [{"peer", "credit_bytes", "received_bytes", "stored_bytes", "served_bytes",
        /// "receipted_bytes"}].
        #[arg(long)]
        json: bool,
    },
    /// Live streams: publish stdin, watch to stdout.
    Stream {
        #[command(subcommand)]
        command: stream::StreamCommand,
    },
    /// Broadcast sites: a username bound to the latest version of a directory.
    Site {
        #[command(subcommand)]
        command: content::SiteCommand,
    },
    /// DHT commands.
    Dht {
        #[command(subcommand)]
        command: DhtCommand,
    },
    /// The DHT value store this node hosts: `status`.
    Store {
        #[command(subcommand)]
        command: data::StoreCommand,
    },
    /// Channels: `create`, `join`, `post`, `read`, `members`, `approve`, `remove`.
    Channel {
        #[command(subcommand)]
        command: channel::ChannelCommand,
    },
    /// Usernames: `register`, `resolve` (`ferry friend add @NAME` uses them).
    Name {
        #[command(subcommand)]
        command: data::NameCommand,
    },
    /// Friends: add, requests, accept, reject, list, remove, custom packets.
    Friend {
        #[command(subcommand)]
        command: chat::FriendCommand,
    },
    /// Send a message to a friend (queued until they are online).
    Send {
        /// Friend: public key or name.
        friend: String,
        /// The text.
        text: String,
        /// Send as an action ("/me").
        #[arg(long)]
        action: bool,
        /// JSON output: the stored message.
        #[arg(long)]
        json: bool,
    },
    /// Print the message history (all friends or one), optionally following new messages.
    Messages {
        /// Friend: public key or name.
        friend: Option<String>,
        /// Keep printing new messages until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// JSON lines: {"friend", "direction", "kind", "text", "time_ms", …}.
        #[arg(long)]
        json: bool,
    },
    /// File transfer: send, list, accept, cancel, pause, resume, avatar.
    File {
        #[command(subcommand)]
        command: files::FileCommand,
    },
    /// Set your name, status message, nospam or auto-accept.
    Set {
        #[command(subcommand)]
        command: chat::SetCommand,
    },
    /// Chat with a friend interactively (line-based).
    Chat {
        /// Friend: public key or name.
        friend: String,
    },
    /// Import a Tox profile (.tox save of qTox, uTox, toxic…): same Tox ID, name and friends.
    /// An encrypted save's passphrase comes from $FERRY_PASSPHRASE or is asked for.
    Import {
        /// The .tox file.
        file: PathBuf,
        /// Replace an existing ferry identity (it is lost).
        #[arg(long)]
        force: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Export this profile as a .tox save other Tox clients load (stop `ferry up` first).
    Export {
        /// The .tox file to write (mode 0600).
        file: PathBuf,
        /// Encrypt with a passphrase (toxencryptsave), from $FERRY_PASSPHRASE or asked for.
        #[arg(long)]
        encrypt: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Deterministic simulations of many nodes in virtual time.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Run N nodes on loopback that bootstrap from each other and look each other up.
    Devnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long, value_name = "S")]
        seconds: Option<u64>,
        /// Stop as soon as every lookup has resolved.
        #[arg(long)]
        until_resolved: bool,
        /// Print the final report as JSON (summary lines go to stderr).
        #[arg(long)]
        json: bool,
        /// Root only: instead, build client / exit / server network namespaces (veth, private
        /// 10.99.0.0/16 ranges), run an exit node and a client there, and show a ping and a
        /// download from the server through the exit; everything is torn down afterwards
        /// (also on Ctrl-C).
        #[arg(long, conflicts_with_all = ["nodes", "seconds", "until_resolved"])]
        netns: bool,
        /// With --netns: download size, MiB.
        #[arg(long, value_name = "MIB", default_value_t = 32, requires = "netns")]
        download_mib: u32,
        /// Instead, run `--nodes` real `ferry up` processes on loopback (store holders, alice
        /// and bob) and show the DHT data layer: alice registers a username, bob resolves it
        /// and befriends her by name, bob's process stops, alice writes to him, bob comes back
        /// and reads it from his mailbox; everything is stopped afterwards.
        #[arg(long, conflicts_with_all = ["netns", "seconds", "until_resolved"])]
        data: bool,
    },
    /// The settlement chain of paid forwarding: `serve` the embedded EVM over JSON-RPC, `fund`
    /// a dev account.
    Chain {
        #[command(subcommand)]
        command: chain::ChainCommand,
    },
    /// `ferry devnet --netns` helper: serve the download pattern on TCP (runs in the server
    /// namespace).
    #[command(hide = true)]
    DevnetServe {
        /// IP:PORT to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// `ferry devnet --netns` helper: download and check N MiB, print a JSON line.
    #[command(hide = true)]
    DevnetFetch {
        /// IP:PORT of `devnet-serve`.
        #[arg(long)]
        from: std::net::SocketAddr,
        /// MiB to fetch.
        #[arg(long)]
        mib: u32,
    },
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// Simulate the DHT: N nodes join from 3 seeds, then look each other up under churn and loss.
    Dht {
        /// Number of nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Fraction of nodes replaced per hour (0.3 = 30 %/h).
        #[arg(long, default_value_t = 0.0, value_name = "PER_HOUR")]
        churn: f64,
        /// Packet loss rate (0.05 = 5 %).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Simulated hours.
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
        /// Run seed (same seed, same run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Lookups each node starts per hour.
        #[arg(long, default_value_t = 6.0)]
        lookups_per_hour: f64,
        /// Threads advancing the nodes (default: the cores not already busy, per the load
        /// average); the result is the same for any count.
        #[arg(long)]
        threads: Option<usize>,
        /// How pairs of nodes derive their crypto_box keys: `hashed` (SHA-512 of the two public
        /// keys, no X25519; fast) or `x25519` (real). The result is the same either way.
        #[arg(long, value_enum, default_value_t = SimKeyAgreement::Hashed)]
        key_agreement: SimKeyAgreement,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Simulate the value store (issue 9): N nodes run the DHT and a store host; items and
    /// offline messages are put, republished and fetched under churn, loss and droppers.
    Store(sim_store::StoreArgs),
    /// Simulate replication of pinned content (issue 10): ≥ 3 live replicas under churn, extra
    /// replicas that follow a demand spike and fall back; an hourly table.
    Replicate(sim_swarm::ReplicateArgs),
    /// Simulate a live stream to N viewers (issue 10): start-up delay, stalls, streamer upload,
    /// tampered segments, recovery after parents leave.
    Stream(sim_swarm::StreamArgs),
}

/// `ferry sim dht --key-agreement`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SimKeyAgreement {
    Hashed,
    X25519,
}

#[derive(Subcommand, Debug)]
enum DhtCommand {
    /// List the close list.
    Nodes {
        /// JSON array of {"public_key", "address", "last_seen_ms"}.
        #[arg(long)]
        json: bool,
    },
    /// Add a bootstrap node to the running daemon.
    Bootstrap {
        /// IP:PORT:DHT_PUBLIC_KEY_HEX.
        node: BootstrapNode,
    },
    /// Store VALUE on the k = 8 closest store-capable nodes; prints its target. Immutable
    /// (target = hash of the value) unless --salt makes it mutable (signed by this node).
    Put {
        /// The value (UTF-8, ≤ 1000 bytes).
        value: String,
        /// Mutable item salt (≤ 64 bytes).
        #[arg(long)]
        salt: Option<String>,
        /// Mutable item sequence number (default: Unix seconds now); requires --salt.
        #[arg(long, requires = "salt")]
        seq: Option<u64>,
        /// JSON: {"target", "stored", "seq"}.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the value stored at TARGET (64 hex digits, as `ferry dht put` printed it).
    Get {
        /// The target.
        target: String,
        /// JSON: {"target", "found", "kind", "value", "value_hex", "seq"}.
        #[arg(long)]
        json: bool,
    },
    /// Find the IP address of a DHT public key.
    Lookup {
        /// DHT public key, 64 hex.
        public_key: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Up { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let profile_dir = cli.profile.clone().unwrap_or_else(profile::default_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &profile_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(profile_dir: &Path) -> Client {
    Client::new(ferry_api::socket_path(profile_dir))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(command: Command, profile_dir: &Path) -> anyhow::Result<()> {
    match command {
        Command::Init { force } => {
            let id = profile::init(profile_dir, force)?;
            println!("{}", id.tox_id());
            eprintln!("profile created at {}", profile_dir.display());
        }
        Command::Id { json } => {
            let id = profile::load(profile_dir)?;
            if json {
                print_json(&serde_json::json!({
                    "tox_id": id.tox_id().to_string(),
                    "public_key": id.public_key().to_hex(),
                }))?;
            } else {
                println!("{}", id.tox_id());
            }
        }
        Command::Up {
            udp_port,
            bootstrap,
            no_default_bootstrap,
            no_lan,
            bind,
            tcp_relay,
            relay_link_rate,
            relay_tap_file,
            relay_peer,
            no_udp,
            no_bootstrap_relays,
            exit_node,
            uplink,
            exit_policy,
            relay_node,
            market,
            gateway,
            store_content,
        } => {
            let opts = UpOptions {
                udp_port,
                bind,
                bootstrap,
                no_default_bootstrap,
                no_lan,
                tcp_relay_ports: tcp_relay,
                relay_link_rate,
                relay_tap_file,
                relay_peers: relay_peer,
                no_udp,
                no_bootstrap_relays,
                exit: match (exit_node, uplink) {
                    (true, Some(uplink)) => Some(ferry_daemon::exit::ExitOptions {
                        uplink,
                        policy_file: exit_policy,
                    }),
                    _ => None,
                },
                service: relay_node || exit_node,
                relay_node,
                market: market.flags(),
                gateway_port: gateway,
                store_content,
            };
            run_up(profile_dir, opts).await?;
        }
        Command::Relay {
            command: RelayCommand::Status { json },
        } => {
            let s: ferry_api::RelayStatus = client(profile_dir).get("/v1/relay/status").await?;
            if json {
                print_json(&s)?;
            } else if !s.enabled {
                println!("no TCP relay (start with `ferry up --tcp-relay PORT`)");
            } else {
                let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
                println!("relay key       {}", s.public_key);
                println!("TCP ports       {}", ports.join(","));
                println!(
                    "clients         {} (+{} in handshake)",
                    s.clients, s.unconfirmed
                );
                println!("links           {}", s.links);
                println!(
                    "relayed         {} bytes in {} packets",
                    s.bytes_relayed, s.packets_relayed
                );
                println!(
                    "rate limit      {} B/s per link, {} bytes dropped",
                    s.link_rate, s.bytes_rate_limited
                );
            }
        }
        Command::Tunnel { command } => tunnel(&client(profile_dir), command).await?,
        Command::Wallet { command, json } => {
            market::wallet(&client(profile_dir), command, json).await?;
        }
        Command::Contracts { json } => market::contracts(&client(profile_dir), json).await?,
        Command::Earnings { json } => market::earnings(&client(profile_dir), json).await?,
        Command::Stop => {
            let _: ferry_api::Ok = client(profile_dir)
                .post("/v1/shutdown", &serde_json::json!({}))
                .await?;
            eprintln!("ferry daemon stopping");
        }
        Command::Status { json } => {
            let s: Status = client(profile_dir).get("/v1/status").await?;
            if json {
                print_json(&s)?;
            } else {
                println!("Tox ID          {}", s.tox_id);
                println!("DHT public key  {}", s.dht_public_key);
                println!("UDP port        {}", s.udp_port);
                println!("connection      {}", s.connection);
                println!(
                    "onion           {}",
                    if s.onion_connected {
                        "announced (friends can find you)"
                    } else {
                        "not announced yet"
                    }
                );
                println!("close nodes     {}", s.close_nodes);
                for r in &s.relays {
                    println!(
                        "TCP relay       {} ({}{})",
                        r.relay,
                        if r.connected {
                            "connected"
                        } else {
                            "not connected"
                        },
                        if r.own { ", announced" } else { ", a friend's" }
                    );
                }
                println!("uptime          {:.1} s", s.uptime_ms as f64 / 1000.0);
                println!(
                    "packets in/out  {}/{}  (malformed dropped: {})",
                    s.packets_in, s.packets_out, s.malformed_dropped
                );
            }
        }
        Command::Publish { path, json, pin } => {
            if pin {
                pins::publish_pinned(&client(profile_dir), path, json).await?;
            } else {
                content::publish(&client(profile_dir), path, json).await?;
            }
        }
        Command::Pins { json } => pins::pins(&client(profile_dir), json).await?,
        Command::Unpin { id } => pins::unpin(&client(profile_dir), id).await?,
        Command::Fetch { id, to, json } => {
            content::fetch(&client(profile_dir), id, to, json).await?;
        }
        Command::Site { command } => content::site(&client(profile_dir), command).await?,
        Command::Stream { command } => stream::run(&client(profile_dir), command).await?,
        Command::Credits { json } => {
            let v: Vec<ferry_api::CreditAccount> =
                client(profile_dir).get("/v1/content/credits").await?;
            if json {
                print_json(&v)?;
            } else if v.is_empty() {
                println!("no credit accounts yet (peers earn credit by serving this node content)");
            } else {
                for a in &v {
                    println!(
                        "{}  credit {} B (served us {} B, stores {} B; we served it {} B, {} B \
                         receipted)",
                        a.peer,
                        a.credit_bytes,
                        a.received_bytes,
                        a.stored_bytes,
                        a.served_bytes,
                        a.receipted_bytes
                    );
                }
            }
        }
        Command::Store { command } => data::store(&client(profile_dir), command).await?,
        Command::Name { command } => data::name(&client(profile_dir), command).await?,
        Command::Channel { command } => channel::run(&client(profile_dir), command).await?,
        Command::Dht { command } => match command {
            DhtCommand::Put {
                value,
                salt,
                seq,
                json,
            } => data::dht_put(&client(profile_dir), value, salt, seq, json).await?,
            DhtCommand::Get { target, json } => {
                data::dht_get(&client(profile_dir), target, json).await?;
            }
            DhtCommand::Nodes { json } => {
                let nodes: Vec<DhtNode> = client(profile_dir).get("/v1/dht/nodes").await?;
                if json {
                    print_json(&nodes)?;
                } else if nodes.is_empty() {
                    println!("the close list is empty");
                } else {
                    println!("{:<64}  {:<40}  last seen", "DHT public key", "address");
                    for n in nodes {
                        println!(
                            "{:<64}  {:<40}  {:.1} s ago",
                            n.public_key,
                            n.address,
                            n.last_seen_ms as f64 / 1000.0
                        );
                    }
                }
            }
            DhtCommand::Bootstrap { node } => {
                let req = BootstrapRequest {
                    address: node.addr.to_string(),
                    public_key: node.public_key.to_hex(),
                };
                let _: ferry_api::Ok = client(profile_dir).post("/v1/dht/bootstrap", &req).await?;
                eprintln!("bootstrapping from {}", node.addr);
            }
            DhtCommand::Lookup {
                public_key,
                timeout,
                json,
            } => {
                let pk =
                    ferry_crypto::PublicKey::from_hex(&public_key).context("bad DHT public key")?;
                let req = LookupRequest {
                    public_key: pk.to_hex(),
                    timeout_ms: Some(timeout.saturating_mul(1000)),
                };
                let r: LookupResult = client(profile_dir).post("/v1/dht/lookup", &req).await?;
                if json {
                    print_json(&r)?;
                } else if let Some(a) = &r.address {
                    println!("{a}  (found in {} ms)", r.elapsed_ms);
                } else {
                    anyhow::bail!("not found within {timeout} s");
                }
            }
        },
        Command::Import { file, force, json } => {
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let pass = if ferry_daemon::toxfile::is_encrypted(&data) {
                Some(passphrase("passphrase of the .tox file")?)
            } else {
                None
            };
            let r = ferry_daemon::toxfile::import(
                profile_dir,
                &data,
                pass.as_deref().map(str::as_bytes),
                force,
            )?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}", r.tox_id);
                eprintln!(
                    "imported {} ({} friends) into {}",
                    if r.name.is_empty() {
                        "the profile"
                    } else {
                        &r.name
                    },
                    r.friends,
                    profile_dir.display()
                );
            }
        }
        Command::Export {
            file,
            encrypt,
            json,
        } => {
            let pass = if encrypt {
                Some(passphrase("passphrase to encrypt the .tox file")?)
            } else {
                None
            };
            let (bytes, r) =
                ferry_daemon::toxfile::export(profile_dir, pass.as_deref().map(str::as_bytes))?;
            write_private(&file, &bytes)?;
            if json {
                print_json(&r)?;
            } else {
                eprintln!(
                    "wrote {} ({} bytes, {} friends{})",
                    file.display(),
                    r.bytes,
                    r.friends,
                    if r.encrypted { ", encrypted" } else { "" }
                );
            }
        }
        Command::Friend { command } => chat::friend(&client(profile_dir), command).await?,
        Command::Send {
            friend,
            text,
            action,
            json,
        } => chat::send(&client(profile_dir), friend, text, action, json).await?,
        Command::Messages {
            friend,
            follow,
            json,
        } => chat::messages(&client(profile_dir), friend, follow, json).await?,
        Command::Set { command } => chat::set(&client(profile_dir), command).await?,
        Command::File { command } => files::file(&client(profile_dir), command).await?,
        Command::Chat { friend } => chat::chat(&client(profile_dir), friend, profile_dir).await?,
        Command::Sim {
            command:
                SimCommand::Dht {
                    nodes,
                    churn,
                    loss,
                    hours,
                    seed,
                    lookups_per_hour,
                    threads,
                    key_agreement,
                    json,
                },
        } => {
            anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
            anyhow::ensure!((0.0..1.0).contains(&loss), "--loss must be in [0, 1)");
            anyhow::ensure!(churn >= 0.0, "--churn must not be negative");
            anyhow::ensure!(
                hours > 0.0 && hours <= 1000.0,
                "--hours must be in (0, 1000]"
            );
            let mut scenario = ferry_sim::dht::DhtScenario::new(nodes, hours, seed);
            scenario.churn_per_hour = churn;
            scenario.link.loss = loss;
            scenario.lookups_per_node_hour = lookups_per_hour;
            scenario.threads = ferry_sim::dht::default_threads();
            scenario.key_agreement = match key_agreement {
                SimKeyAgreement::Hashed => ferry_sim::dht::KeyAgreement::Hashed,
                SimKeyAgreement::X25519 => ferry_sim::dht::KeyAgreement::X25519,
            };
            if let Some(t) = threads {
                anyhow::ensure!(t >= 1, "--threads must be at least 1");
                scenario.threads = t;
            }
            let bar = indicatif::ProgressBar::new(scenario.duration.as_secs());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} simulated {pos}/{len} s [{bar:30}] {percent}%  elapsed {elapsed}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let report = tokio::task::spawn_blocking(move || {
                let r = ferry_sim::dht::run(&scenario, |done, _| bar.set_position(done.as_secs()));
                bar.finish_and_clear();
                r
            })
            .await?;
            if json {
                print_json(&report)?;
            } else {
                print_sim_table(&report);
            }
        }
        Command::Sim {
            command: SimCommand::Store(args),
        } => sim_store::run(args).await?,
        Command::Sim {
            command: SimCommand::Replicate(args),
        } => sim_swarm::replicate(args).await?,
        Command::Sim {
            command: SimCommand::Stream(args),
        } => sim_swarm::stream(args).await?,
        Command::Devnet {
            netns: true,
            download_mib,
            json,
            ..
        } => {
            devnet_netns::run_netns(devnet_netns::NetnsOptions { download_mib, json }).await?;
        }
        Command::Devnet {
            data: true,
            nodes,
            json,
            ..
        } => {
            devnet_data::run_data(devnet_data::DataOptions { nodes, json }).await?;
        }
        Command::Chain { command } => chain::run(command).await?,
        Command::DevnetServe { listen } => {
            tokio::task::spawn_blocking(move || devnet_netns::serve(listen)).await??;
        }
        Command::DevnetFetch { from, mib } => {
            tokio::task::spawn_blocking(move || devnet_netns::fetch(from, mib)).await??;
        }
        Command::Devnet {
            nodes,
            seconds,
            until_resolved,
            json,
            ..
        } => {
            let opts = DevnetOptions {
                nodes,
                seconds,
                until_resolved,
            };
            let mut announced = false;
            let report = run_devnet(opts, |snap| {
                for c in &snap.chat {
                    if json {
                        eprintln!("  {c}")
                    } else {
                        println!("  {c}")
                    }
                }
                let line = snap.line();
                if json {
                    eprintln!("{line}")
                } else {
                    println!("{line}")
                }
                if snap.resolved == snap.lookups && !announced {
                    announced = true;
                    let msg = format!(
                        "all {} lookups resolved after {:.1} s",
                        snap.lookups,
                        snap.elapsed.as_secs_f64()
                    );
                    if json {
                        eprintln!("{msg}")
                    } else {
                        println!("{msg}")
                    }
                }
            })
            .await?;
            if json {
                print_json(&report)?;
            }
        }
    }
    Ok(())
}

/// The passphrase from `$FERRY_PASSPHRASE`, else one line read from stdin after a prompt.
fn passphrase(prompt: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("FERRY_PASSPHRASE") {
        return Ok(p);
    }
    eprint!("{prompt}: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the passphrase")?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!p.is_empty(), "empty passphrase");
    Ok(p)
}

/// Writes `bytes` to `path` readable by the owner only (a save holds the secret key).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

fn print_sim_table(r: &ferry_sim::dht::DhtReport) {
    let rows: Vec<(&str, String)> = vec![
        ("nodes", r.nodes.to_string()),
        ("seed", r.seed.to_string()),
        (
            "churn per hour",
            format!("{:.0} %", r.churn_per_hour * 100.0),
        ),
        ("loss", format!("{:.1} %", r.loss * 100.0)),
        ("lookups", r.lookups.to_string()),
        (
            "lookup success rate",
            format!("{:.4} %", r.lookup_success_rate * 100.0),
        ),
        ("median lookup", format!("{:.0} ms", r.median_lookup_ms)),
        ("p99 lookup", format!("{:.0} ms", r.p99_lookup_ms)),
        (
            "requests per lookup",
            format!("{:.1}", r.requests_per_lookup),
        ),
        (
            "idle packets/node/min (in+out)",
            format!("{:.0}", r.idle_packets_per_node_minute),
        ),
        (
            "idle packets sent/node/min",
            format!("{:.0}", r.idle_sent_per_node_minute),
        ),
        (
            "bootstrap stable after",
            r.bootstrap_stable_s
                .map_or("not within warm-up".into(), |s| format!("{s:.0} s")),
        ),
        ("mean close list", format!("{:.1}", r.close_list_mean)),
        ("nodes churned", r.churned.to_string()),
        (
            "shared keys computed per node",
            format!("{:.0}", r.keys_computed_per_node),
        ),
        ("packets sent (network)", r.packets_sent.to_string()),
        (
            "threads, key agreement",
            format!("{}, {:?}", r.threads, r.key_agreement),
        ),
        ("simulated", format!("{:.0} s", r.simulated_seconds)),
        (
            "wall",
            format!(
                "{:.1} s ({:.0}x real time)",
                r.wall_seconds,
                r.simulated_seconds / r.wall_seconds.max(1e-9)
            ),
        ),
        (
            "peak RSS",
            format!("{:.0} MiB", r.peak_rss_bytes as f64 / 1048576.0),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<32} {v}");
    }
}

/// `ferry tunnel ...`.
#[derive(Debug, Subcommand)]
enum TunnelCommand {
    /// Create the TUN device with this node's mesh address and carry IPv6 to friends.
    Up {
        /// TUN device name.
        #[arg(long, default_value = "ferry0")]
        device: String,
        /// Exit node (its long-term public key). Without --via: non-mesh traffic for --route
        /// goes there (a friend, or a service node befriended by key); the exit assigns an IPv4
        /// address from 100.64.0.0/10, IPv6 leaves with our mesh address as source. With --via:
        /// the far end of a multi-hop circuit; an exit node gets the --route traffic (default:
        /// the default route) through it and knows us only by a per-circuit pseudonym (our IPv6
        /// source is that pseudonym's mesh address); another node gets traffic to its mesh
        /// address.
        #[arg(long, value_name = "PUBLIC_KEY")]
        exit: Option<String>,
        /// Route this prefix into the tunnel to the exit (repeatable; IPv4 or IPv6). A default
        /// route (0.0.0.0/0, ::/0) is installed as two /1 halves, after pinning host routes to
        /// the exit's (with --via: the first relay's) current UDP endpoint and TCP relay through
        /// the previous route, so ferry's own traffic never enters the tunnel.
        #[arg(long = "route", value_name = "CIDR", requires = "exit")]
        routes: Vec<String>,
        /// Reach the --exit node through these relays (long-term keys, comma-separated): a
        /// multi-hop circuit where each relay learns only its previous and next hop.
        #[arg(long, value_name = "PK,PK...", value_delimiter = ',')]
        via: Vec<String>,
        /// TAP mode: also open a TAP device (MTU 1358, no address) that carries Ethernet frames
        /// to friends that run --tap too (learning bridge); put it into a Linux bridge with a LAN
        /// port to bridge two LANs. The TUN device comes up as without --tap.
        #[arg(long)]
        tap: bool,
        /// TAP device name.
        #[arg(long, default_value = "ferrytap0", requires = "tap")]
        tap_device: String,
        /// Highest price per KiB paid to relays and exits, wei (needs `ferry up --market`;
        /// default: `max_price_per_kib` of the `[market]` table).
        #[arg(long, value_name = "WEI")]
        max_price: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove the TUN device.
    Down,
    /// Show the tunnel: address, peers, packets and bytes each way.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn print_tunnel(s: &ferry_api::TunnelStatus) {
    println!("state           {}", if s.up { "up" } else { "down" });
    if s.up {
        println!("device          {} (MTU {})", s.device, s.mtu);
    }
    println!("address         {} (mesh prefix {})", s.address, s.prefix);
    println!(
        "sent            {} packets, {} bytes",
        s.tx_packets, s.tx_bytes
    );
    println!(
        "received        {} packets, {} bytes",
        s.rx_packets, s.rx_bytes
    );
    println!(
        "dropped         {} ({} spoofed source)",
        s.dropped, s.dropped_bad_source
    );
    println!(
        "data plane      {} session(s), {} handshake(s), {} datagram(s) refused",
        s.dataplane.sessions, s.dataplane.handshakes, s.dataplane.dropped
    );
    for p in &s.peers {
        println!("peer            {}  {}", p.address, p.public_key);
    }
    if s.exit_node {
        println!("exit node       {} client(s)", s.exit_clients);
    }
    if let Some(e) = &s.exit {
        println!("exit            {e}");
        println!(
            "client address  {} / {}",
            s.client_address_v4.as_deref().unwrap_or("-"),
            s.client_address_v6.as_deref().unwrap_or("-")
        );
        for r in &s.routes {
            println!("route           {r}");
        }
        if let Some(c) = &s.exit_circuit {
            println!(
                "exit path       circuit {} via {} ({} relay(s))",
                c.id,
                c.hops.join(" → "),
                c.hops.len().saturating_sub(1)
            );
        }
    }
    if let Some(c) = &s.exit_counters {
        println!(
            "exit traffic    {} out, {} back; dropped: {} malformed, {} bad source, {} policy, {} no client, {} no route",
            c.forwarded, c.returned, c.malformed, c.bad_source, c.policy, c.no_client, c.no_route
        );
    }
    if let Some(t) = &s.tap {
        println!(
            "tap device      {} (MTU {}, MAC {})",
            t.device, t.mtu, t.mac
        );
        println!(
            "tap             {} MACs learnt ({} evicted), {} TAP peer(s)",
            t.macs,
            t.macs_evicted,
            t.peers.len()
        );
        println!(
            "tap sent        {} frames, {} bytes",
            t.tx_frames, t.tx_bytes
        );
        println!(
            "tap received    {} frames, {} bytes",
            t.rx_frames, t.rx_bytes
        );
        println!(
            "tap dropped     {} ({} bad length, {} group source, {} no route, {} send)",
            t.dropped,
            t.dropped_bad_length,
            t.dropped_group_source,
            t.dropped_no_route,
            t.dropped_send
        );
    }
    for c in &s.circuits {
        println!(
            "circuit {:<7} {} {}  hops {}  tx {} pkts/{} B  rx {} pkts/{} B  rtt {}",
            c.id,
            c.role,
            c.state,
            c.hops.join(","),
            c.tx_packets,
            c.tx_bytes,
            c.rx_packets,
            c.rx_bytes,
            c.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms"))
        );
    }
}

async fn tunnel(c: &Client, command: TunnelCommand) -> anyhow::Result<()> {
    match command {
        TunnelCommand::Up {
            device,
            exit,
            routes,
            via,
            tap,
            tap_device,
            max_price,
            json,
        } => {
            let s: ferry_api::TunnelStatus = c
                .post(
                    "/v1/tunnel/up",
                    &ferry_api::TunnelUp {
                        device: Some(device),
                        exit,
                        routes,
                        via,
                        tap,
                        tap_device: tap.then_some(tap_device),
                        max_price,
                    },
                )
                .await?;
            if json {
                print_json(&s)?;
            } else {
                print_tunnel(&s);
            }
        }
        TunnelCommand::Down => {
            let _: ferry_api::Ok = c.post("/v1/tunnel/down", &ferry_api::TunnelDown {}).await?;
            println!("tunnel down");
        }
        TunnelCommand::Status { json } => {
            let s: ferry_api::TunnelStatus = c.get("/v1/tunnel/status").await?;
            if json {
                print_json(&s)?;
            } else {
                print_tunnel(&s);
            }
        }
    }
    Ok(())
}
