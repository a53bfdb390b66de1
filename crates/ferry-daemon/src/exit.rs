//! Exit nodes and exit clients (issue 7 item 2, seed 003): the driver half. The sans-IO half
//! (address pool, policy, control messages, return routing) is [`ferry_tunnel::exit`].
//!
//! # Exit (`ferry up --exit-node --uplink IFACE [--exit-policy FILE]`)
//! At start the node brings its tunnel up (TUN device `ferry0` with its mesh address and
//! [`EXIT_GATEWAY_V4`]`/10`) and sets up, with `iptables`/`ip6tables` (both families):
//!
//! - filter chain `FERRY-EXIT-<udp port>` jumped to first from `FORWARD`:
//!   `-i ferry0 -o IFACE ACCEPT`; `-i IFACE -o ferry0 -m conntrack --ctstate
//!   ESTABLISHED,RELATED ACCEPT`; `-i IFACE -o ferry0 DROP` (the uplink never forwards
//!   unsolicited traffic into the mesh, seed 003's IGNORE_INTERFACE); `-i ferry0 DROP` (clients
//!   reach only the uplink);
//! - nat chain of the same name jumped to from `POSTROUTING`: `-s 100.64.0.0/10 -o IFACE
//!   MASQUERADE` (IPv6: `-s fd54:6f78::/32`, the clients' mesh addresses);
//! - `net.ipv4.ip_forward = 1`, `net.ipv6.conf.all.forwarding = 1`, and the uplink's
//!   `accept_ra` 1 → 2 so it keeps taking router advertisements (previous values restored).
//!
//! Teardown (on SIGINT/SIGTERM, `ferry stop`, or drop) deletes the jumps and exactly these two
//! chains (names carry the UDP port, so two exits in one namespace do not collide) and restores
//! the sysctls. Setup first removes leftovers of a crashed run with the same name.
//!
//! In userspace every client packet is checked by [`ExitTable::check_from_client`] (source
//! assigned to that client, destination allowed by the policy) before it is written to the TUN
//! device; return traffic read from the TUN device goes to the client owning its destination.
//!
//! # Policy file (TOML)
//! ```toml
//! # Without a policy file everything is allowed. With one, only what a rule allows.
//! [[allow]]
//! cidr = "10.0.0.0/8"        # destination prefix, IPv4 or IPv6
//! protocol = "tcp"           # any (default), tcp, udp, icmp
//! ports = "80, 443, 8000-8100"   # destination ports (TCP/UDP), default all
//! [[allow]]
//! cidr = "::/0"
//! protocol = "icmp"
//! ```
//!
//! # Client (`ferry tunnel up --exit KEY [--route CIDR]...`)
//! The exit must be a friend. The client sends [`ExitControl::Request`] (lossless packet 170)
//! every second until it gets [`ExitControl::Assign`] (≤ [`ASSIGN_TIMEOUT`]), puts the IPv4
//! address on the TUN device as a /32, and adds `ip route replace CIDR dev ferry0 src ADDR` for
//! each route (IPv6 routes use the mesh address as source). A default route (`0.0.0.0/0`, `::/0`)
//! is installed as two /1 routes, which win over the existing default by length, after
//! - pinning host routes (`/32`, `/128`) to the exit's current UDP endpoint and TCP relay and to
//!   our connected TCP relays through the route the kernel used before (`ip route get`), and
//! - policy routing for ferry's own UDP socket ([`Bypass`]: `ip rule ... ipproto udp sport
//!   PORT`), so ferry's DHT, onion and friend traffic keeps the previous default route.
//!
//! So ferry's own packets never enter the tunnel (no double encapsulation, hole punching to
//! other friends keeps working). Relays connected later are not pinned.
//!
//! # Client through a circuit (`ferry tunnel up --via R1,... --exit KEY [--route CIDR]...`)
//! [`client_up_via`]: an anonymous circuit to the exit ([`crate::circuit`]); the exit need not
//! be a friend and knows the client only by a per-circuit pseudonym. Request/Assign travel in
//! the circuit's data cells; the assigned IPv6 address is the pseudonym's mesh address (added
//! to the device); routes get `mtu` [`ferry_tunnel::circuit::CIRCUIT_MTU`]; the default route
//! pins the first relay's endpoints instead of the exit's. On the exit, circuit clients go
//! through the same [`ExitTable`] (pool, policy, source checks) as friends.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_api::{ApiError, ExitDrops, TunnelStatus};
use ferry_crypto::PublicKey;
use ferry_net::NodeHandle;
use ferry_proto::node::Node;
use ferry_tunnel::exit::{
    CLIENT_POOL_V4, CLIENT_POOL_V4_LEN, Cidr, EXIT_GATEWAY_V4, ExitClient, ExitControl,
    ExitCounters, ExitDrop, ExitPolicy, ExitTable, PolicyRule, REFUSE_NOT_EXIT,
};
use ferry_tunnel::{DropReason, MESH_PREFIX, MESH_PREFIX_LEN, MeshRouter};

use crate::tunnel::TunnelShared;

/// How long `tunnel up --exit` waits for the exit's address assignment: 30 s.
pub const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between address requests while waiting: 1 s.
pub const REQUEST_INTERVAL: Duration = Duration::from_secs(1);
/// Most `--route` prefixes one client takes: 64.
pub const MAX_ROUTES: usize = 64;
/// Largest policy file read, bytes: 1 MiB.
pub const MAX_POLICY_FILE: u64 = 1 << 20;

/// The exit/client role of a running tunnel (stored next to the mesh router).
#[derive(Debug, Default)]
pub enum ExitHook {
    /// Plain mesh tunnel.
    #[default]
    None,
    /// This node is an exit.
    Exit(ExitTable),
    /// This node sends non-mesh traffic to an exit.
    Client {
        /// The exit state.
        client: ExitClient,
        /// The exit refused (reason code), if it did.
        refused: Option<u8>,
        /// Routes into the tunnel as installed (after splitting defaults).
        routes: Vec<Cidr>,
        /// Host routes pinned outside the tunnel (deleted on `tunnel down`).
        pinned: Vec<IpAddr>,
        /// Policy-routing bypass of ferry's own UDP socket (removed on `tunnel down`).
        bypass: Option<Bypass>,
    },
}

fn exit_drop_reason(e: ExitDrop) -> DropReason {
    match e {
        ExitDrop::Malformed => DropReason::BadLength,
        ExitDrop::BadSource => DropReason::BadSource,
        ExitDrop::Policy | ExitDrop::NoClient | ExitDrop::NoRoute => DropReason::NoRoute,
    }
}

/// Hook of the TUN → friend path: `Some` when the exit role decides (the friend to send to, or
/// a drop already counted in the exit counters), `None` for plain mesh traffic.
pub fn route_outbound(hook: &mut ExitHook, pkt: &[u8]) -> Option<Result<PublicKey, DropReason>> {
    match hook {
        ExitHook::None => None,
        ExitHook::Exit(t) => {
            let dst = ferry_tunnel::exit::IpPacket::parse(pkt).ok()?.dst;
            if !t.is_client_address(&dst) {
                return None;
            }
            Some(
                t.route_to_client(Instant::now(), pkt)
                    .map_err(exit_drop_reason),
            )
        }
        ExitHook::Client { client, .. } => client
            .route_outbound(pkt)
            .map(|r| r.map_err(exit_drop_reason)),
    }
}

/// Hook of the friend → TUN path: `Some` when the exit role decides (write, or drop already
/// counted), `None` for plain mesh traffic (checked by the [`MeshRouter`]).
pub fn check_inbound(
    hook: &mut ExitHook,
    router: &MeshRouter,
    from: &PublicKey,
    pkt: &[u8],
) -> Option<Result<(), DropReason>> {
    match hook {
        ExitHook::None => None,
        ExitHook::Exit(t) => {
            // Mesh traffic to the exit itself stays on the mesh path.
            if let Ok(h) = ferry_tunnel::Ipv6Header::parse(pkt)
                && h.dst == router.own_address()
            {
                return None;
            }
            Some(
                t.check_from_client(Instant::now(), from, pkt)
                    .map(|_| ())
                    .map_err(exit_drop_reason),
            )
        }
        ExitHook::Client { client, .. } => client
            .check_inbound(from, pkt)
            .map(|r| r.map_err(exit_drop_reason)),
    }
}

/// An exit control message (`data`, id byte first) from friend `from`, in the node task:
/// exits answer requests, clients take assignments, other nodes refuse requests.
pub fn on_control(
    tunnel: &TunnelShared,
    node: &mut Node,
    now: Instant,
    from: &PublicKey,
    data: &[u8],
) {
    let Ok(msg) = ExitControl::decode(data) else {
        return;
    };
    let reply = tunnel
        .with_exit(|hook, router| control_reply(hook, router, now, from, data))
        .unwrap_or(if msg == ExitControl::Request {
            Some(ExitControl::Refuse(REFUSE_NOT_EXIT))
        } else {
            None
        });
    if let Some(m) = reply
        && let Err(e) = node.send_custom(now, from, &m.encode())
    {
        tracing::debug!(friend = %from, "exit control reply: {e}");
    }
}

/// An exit control message (`data`, id byte first) from `from` (a friend, or the far end of an
/// exit circuit: the exit on a client, a client's pseudonym on an exit) handled by the exit
/// role: the answer to send back the same way, if any.
pub fn control_reply(
    hook: &mut ExitHook,
    router: &MeshRouter,
    now: Instant,
    from: &PublicKey,
    data: &[u8],
) -> Option<ExitControl> {
    let msg = ExitControl::decode(data).ok()?;
    match hook {
        ExitHook::Exit(t) => t.on_control(now, *from, msg),
        ExitHook::Client {
            client, refused, ..
        } => {
            if let ExitControl::Refuse(r) = msg
                && *from == client.exit
            {
                *refused = Some(r);
            }
            client.on_assign(from, msg, router.own_address());
            None
        }
        ExitHook::None => {
            (msg == ExitControl::Request).then_some(ExitControl::Refuse(REFUSE_NOT_EXIT))
        }
    }
}

/// Fills the exit fields of `s` from the hook.
pub fn fill_status(hook: &ExitHook, s: &mut TunnelStatus) {
    let counters = |c: &ExitCounters| ExitDrops {
        forwarded: c.forwarded,
        returned: c.returned,
        malformed: c.drop_malformed,
        bad_source: c.drop_bad_source,
        policy: c.drop_policy,
        no_client: c.drop_no_client,
        no_route: c.drop_no_route,
    };
    match hook {
        ExitHook::None => {}
        ExitHook::Exit(t) => {
            s.exit_node = true;
            s.exit_clients = t.len() as u64;
            s.exit_counters = Some(counters(&t.counters));
        }
        ExitHook::Client { client, routes, .. } => {
            s.exit = Some(client.exit.to_hex());

            if let Some((v4, _, v6)) = client.assigned {
                s.client_address_v4 = Some(v4.to_string());
                s.client_address_v6 = Some(v6.to_string());
            }
            s.routes = routes.iter().map(ToString::to_string).collect();
            s.exit_counters = Some(counters(&client.counters));
        }
    }
}

/// Called by `tunnel down` with the hook of the tunnel taken down: removes pinned host routes
/// (routes through the device go with it).
pub fn on_down(hook: &ExitHook) {
    if let ExitHook::Client { pinned, bypass, .. } = hook {
        for ip in pinned {
            let _ = ip_cmd(ip.is_ipv6(), &["route", "del", &host_cidr(ip)]);
        }
        if let Some(b) = bypass {
            b.remove();
        }
    }
}

/// Routing table holding a copy of the pre-tunnel default routes: 21574 (0x5446, "TF").
pub const BYPASS_TABLE: u32 = 0x5446;
/// Preference of the first bypass rule (`lookup main suppress_prefixlength 1`); the second
/// (`lookup` [`BYPASS_TABLE`]) is one more: 5446.
pub const BYPASS_PREF: u32 = 5446;

/// Policy routing that keeps ferry's own UDP socket (port `udp_port`) off the tunnel's default
/// route: for packets with `ipproto udp sport PORT`, rule [`BYPASS_PREF`] uses the main table
/// but ignores routes of prefix length ≤ 1 (the tunnel's two halves and the default), and rule
/// `BYPASS_PREF + 1` uses [`BYPASS_TABLE`], a copy of the default route(s) from before the
/// tunnel. Both families.
#[derive(Clone, Debug)]
pub struct Bypass {
    udp_port: u16,
}

impl Bypass {
    fn rule_args(&self, second: bool) -> Vec<String> {
        let mut v: Vec<String> = ["rule", "add", "pref"]
            .iter()
            .map(ToString::to_string)
            .collect();
        v.push((BYPASS_PREF + u32::from(second)).to_string());
        v.extend(["ipproto", "udp", "sport"].iter().map(ToString::to_string));
        v.push(self.udp_port.to_string());
        if second {
            v.extend(["lookup".to_string(), BYPASS_TABLE.to_string()]);
        } else {
            v.extend(
                ["lookup", "main", "suppress_prefixlength", "1"]
                    .iter()
                    .map(ToString::to_string),
            );
        }
        v
    }

    /// Installs the rules and copies the current default routes into [`BYPASS_TABLE`].
    ///
    /// # Errors
    /// An `ip` command failed (what was added is removed).
    fn install(udp_port: u16) -> Result<Self, String> {
        let b = Self { udp_port };
        b.remove();
        for v6 in [false, true] {
            let defaults = ip_cmd(v6, &["route", "show", "default"]).unwrap_or_default();
            for line in defaults.lines().filter(|l| l.starts_with("default")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let table = BYPASS_TABLE.to_string();
                let mut args = vec!["route", "replace"];
                // Keep `default [via GW] dev DEV` (drop proto/metric/etc.).
                let mut i = 0;
                while i < words.len() {
                    match words[i] {
                        "default" => args.push("default"),
                        k @ ("via" | "dev") if i + 1 < words.len() => {
                            args.extend([k, words[i + 1]]);
                            i += 1;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                args.extend(["table", table.as_str()]);
                if let Err(e) = ip_cmd(v6, &args) {
                    b.remove();
                    return Err(e);
                }
            }
            for second in [false, true] {
                let a = b.rule_args(second);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                if let Err(e) = ip_cmd(v6, &a) {
                    b.remove();
                    return Err(e);
                }
            }
        }
        Ok(b)
    }

    /// Deletes the rules and flushes [`BYPASS_TABLE`]; idempotent.
    fn remove(&self) {
        for v6 in [false, true] {
            for second in [false, true] {
                let mut a = self.rule_args(second);
                a[1] = "del".to_string();
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                while ip_cmd(v6, &a).is_ok() {}
            }
            let _ = ip_cmd(v6, &["route", "flush", "table", &BYPASS_TABLE.to_string()]);
        }
    }
}

fn host_cidr(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Runs `ip [-6] ARGS`; error text on failure.
fn ip_cmd(v6: bool, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("ip");
    if v6 {
        c.arg("-6");
    }
    let out = c
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Reads an exit policy file (format in the module docs).
///
/// # Errors
/// Unreadable, too large, bad TOML, a bad rule.
pub fn load_policy(path: &Path) -> anyhow::Result<ExitPolicy> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        allow: Vec<Rule>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Port {
        N(u16),
        S(String),
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Ports {
        S(String),
        L(Vec<Port>),
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        cidr: String,
        #[serde(default)]
        protocol: Option<String>,
        #[serde(default)]
        ports: Option<Ports>,
    }
    let meta = std::fs::metadata(path)?;
    anyhow::ensure!(
        meta.len() <= MAX_POLICY_FILE,
        "policy file larger than {MAX_POLICY_FILE} bytes"
    );
    let text = std::fs::read_to_string(path)?;
    let f: File = toml::from_str(&text)?;
    let mut rules = Vec::new();
    for r in f.allow {
        let ports = match r.ports {
            None => String::new(),
            Some(Ports::S(s)) => s,
            Some(Ports::L(l)) => l
                .into_iter()
                .map(|p| match p {
                    Port::N(n) => n.to_string(),
                    Port::S(s) => s,
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        rules.push(PolicyRule::parse(
            &r.cidr,
            r.protocol.as_deref().unwrap_or("any"),
            &ports,
        )?);
    }
    Ok(ExitPolicy::allow_only(rules)?)
}

/// Options of an exit node (`ferry up --exit-node`).
#[derive(Clone, Debug)]
pub struct ExitOptions {
    /// The uplink interface clients' traffic leaves by.
    pub uplink: String,
    /// Policy file (`None` = allow everything).
    pub policy_file: Option<PathBuf>,
}

/// The firewall and sysctl state an exit added; removed by [`ExitFirewall::teardown`] or drop.
#[derive(Debug)]
pub struct ExitFirewall {
    chain: String,
    saved_sysctls: Vec<(PathBuf, String)>,
    active: bool,
}

const SYSCTLS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

fn ipt(v6: bool, args: &[&str]) -> Result<(), String> {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let out = Command::new(bin)
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("running {bin}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{bin} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl ExitFirewall {
    /// Adds the chains and rules of the module docs for TUN `device` and `uplink`, chain name
    /// `FERRY-EXIT-<port>`, and turns forwarding on.
    ///
    /// # Errors
    /// An iptables/ip6tables command failed (what was added is removed again).
    pub fn setup(device: &str, uplink: &str, port: u16) -> anyhow::Result<Self> {
        let chain_name = format!("FERRY-EXIT-{port}");
        let chain = chain_name.as_str();
        let mut fw = Self {
            chain: chain_name.clone(),
            saved_sysctls: Vec::new(),
            active: true,
        };
        fw.remove_rules();
        let mesh = format!(
            "{}/{MESH_PREFIX_LEN}",
            std::net::Ipv6Addr::from({
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&MESH_PREFIX);
                a
            })
        );
        let pool = format!("{CLIENT_POOL_V4}/{CLIENT_POOL_V4_LEN}");
        for v6 in [false, true] {
            let src = if v6 { mesh.as_str() } else { pool.as_str() };
            let steps: Vec<Vec<&str>> = vec![
                vec!["-N", chain],
                vec![
                    "-A", chain, "-i", device, "-o", uplink, "-s", src, "-j", "ACCEPT",
                ],
                vec![
                    "-A",
                    chain,
                    "-i",
                    uplink,
                    "-o",
                    device,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
                vec!["-A", chain, "-i", uplink, "-o", device, "-j", "DROP"],
                vec!["-A", chain, "-i", device, "-j", "DROP"],
                vec!["-I", "FORWARD", "1", "-j", chain],
                vec!["-t", "nat", "-N", chain],
                vec![
                    "-t",
                    "nat",
                    "-A",
                    chain,
                    "-s",
                    src,
                    "-o",
                    uplink,
                    "-j",
                    "MASQUERADE",
                ],
                vec!["-t", "nat", "-A", "POSTROUTING", "-j", chain],
            ];
            for s in steps {
                if let Err(e) = ipt(v6, &s) {
                    fw.teardown();
                    anyhow::bail!("exit firewall: {e}");
                }
            }
        }
        for path in SYSCTLS {
            let old = std::fs::read_to_string(path).unwrap_or_default();
            if let Err(e) = std::fs::write(path, "1\n") {
                fw.teardown();
                anyhow::bail!("enabling forwarding ({path}): {e}");
            }
            fw.saved_sysctls
                .push((PathBuf::from(path), old.trim().to_string()));
        }
        // With forwarding on, an uplink with accept_ra = 1 would stop taking router
        // advertisements (and lose its SLAAC address/default route): 2 keeps taking them.
        let ra = format!("/proc/sys/net/ipv6/conf/{uplink}/accept_ra");
        if let Ok(old) = std::fs::read_to_string(&ra)
            && old.trim() == "1"
            && std::fs::write(&ra, "2\n").is_ok()
        {
            fw.saved_sysctls.push((PathBuf::from(ra), "1".to_string()));
        }
        Ok(fw)
    }

    /// The chain name (`FERRY-EXIT-<port>`), in both the filter and nat tables of both families.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    fn remove_rules(&self) {
        let c = self.chain.as_str();
        for v6 in [false, true] {
            // Delete every jump (a crashed run may have left several), then the chains.
            while ipt(v6, &["-D", "FORWARD", "-j", c]).is_ok() {}
            while ipt(v6, &["-t", "nat", "-D", "POSTROUTING", "-j", c]).is_ok() {}
            let _ = ipt(v6, &["-F", c]);
            let _ = ipt(v6, &["-X", c]);
            let _ = ipt(v6, &["-t", "nat", "-F", c]);
            let _ = ipt(v6, &["-t", "nat", "-X", c]);
        }
    }

    /// Removes what [`ExitFirewall::setup`] added and restores the sysctls; idempotent.
    pub fn teardown(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        self.remove_rules();
        for (path, old) in self.saved_sysctls.drain(..) {
            if !old.is_empty() {
                let _ = std::fs::write(&path, format!("{old}\n"));
            }
        }
        tracing::info!(chain = %self.chain, "exit firewall removed");
    }
}

impl Drop for ExitFirewall {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Starts the exit role of `ferry up`: policy, tunnel with the gateway address, firewall.
/// Returns the firewall guard (dropping it tears the firewall down).
///
/// # Errors
/// Bad policy file, TUN device or iptables failures.
pub async fn start_exit(
    tunnel: &TunnelShared,
    node: &NodeHandle,
    own: PublicKey,
    opts: &ExitOptions,
    port: u16,
) -> anyhow::Result<ExitFirewall> {
    let u = &opts.uplink;
    anyhow::ensure!(
        !u.is_empty()
            && u.len() <= crate::tunnel::MAX_DEVICE_NAME
            && u != "."
            && u != ".."
            && !u.bytes().any(|b| b == b'/' || b.is_ascii_whitespace()),
        "bad uplink interface name {u:?}"
    );
    let policy = match &opts.policy_file {
        Some(p) => {
            load_policy(p).map_err(|e| anyhow::anyhow!("exit policy {}: {e}", p.display()))?
        }
        None => ExitPolicy::allow_all(),
    };
    let rules = policy.rules.len();
    let status = tunnel
        .up_with(node, own, None, ExitHook::Exit(ExitTable::new(policy)))
        .await
        .map_err(|e| anyhow::anyhow!("exit tunnel: {}", e.message))?;
    let device = status.device;
    ip_cmd(
        false,
        &[
            "addr",
            "replace",
            &format!("{EXIT_GATEWAY_V4}/{CLIENT_POOL_V4_LEN}"),
            "dev",
            &device,
        ],
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let fw = ExitFirewall::setup(&device, &opts.uplink, port)?;
    // Clients may also come through anonymous multi-hop circuits.
    tunnel.circuits.set_exit_node();
    tunnel.circuits.set_end(node, Some(device.clone())).await;
    eprintln!(
        "  exit node: {device} → {} (NAT chain {}, policy: {})",
        opts.uplink,
        fw.chain(),
        if opts.policy_file.is_some() {
            format!("{rules} allow rule(s), deny the rest")
        } else {
            "allow all".to_string()
        }
    );
    Ok(fw)
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// `POST /v1/tunnel/up` with `exit`: see the module docs.
///
/// # Errors
/// 400 bad key/route or not a friend; 409 this node is an exit; 504 no assignment in
/// [`ASSIGN_TIMEOUT`]; 502 the exit refused; 500 `ip` failures.
pub async fn client_up(
    tunnel: &TunnelShared,
    node: &NodeHandle,
    own: PublicKey,
    device: Option<String>,
    exit_hex: &str,
    routes: &[String],
) -> Result<TunnelStatus, ApiError> {
    client_up_via(tunnel, node, own, device, exit_hex, routes, Vec::new()).await
}

/// [`client_up`] through a multi-hop circuit when `via` (the relays, in order) is not empty:
/// the circuit to the exit is anonymous ([`crate::circuit::CircuitDriver::build_exit`]), the
/// address request and answer and every routed packet go through it, the exit need not be a
/// friend and assigns the mesh address of a per-circuit pseudonym as our IPv6 address (added
/// to the device, `nodad`), the routes carry the circuit MTU
/// ([`ferry_tunnel::circuit::CIRCUIT_MTU`]) and default routes pin the first relay's
/// endpoints instead of the exit's.
///
/// # Errors
/// As [`client_up`]; circuit errors as [`crate::circuit::CircuitDriver::build`] (502
/// "far end does not accept circuits" when the exit is no exit node).
pub async fn client_up_via(
    tunnel: &TunnelShared,
    node: &NodeHandle,
    own: PublicKey,
    device: Option<String>,
    exit_hex: &str,
    routes: &[String],
    via: Vec<PublicKey>,
) -> Result<TunnelStatus, ApiError> {
    let circuit = !via.is_empty();
    let first_hop = via.first().copied();
    let exit = PublicKey::from_hex(exit_hex).map_err(|e| bad(format!("bad exit key: {e}")))?;
    if routes.len() > MAX_ROUTES {
        return Err(bad(format!("more than {MAX_ROUTES} routes")));
    }
    let mut cidrs = Vec::new();
    for r in routes {
        let c: Cidr = r.parse().map_err(bad)?;
        cidrs.extend(c.split_default());
    }
    let friends = node
        .call(|n, _| n.friends())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !circuit && !friends.iter().any(|f| f.public_key == exit) {
        return Err(bad(format!(
            "exit {exit} is not a friend: add it first (`ferry friend add <its public key>`)"
        )));
    }
    let hook = || ExitHook::Client {
        client: if circuit {
            ExitClient::new_pseudonymous(exit)
        } else {
            ExitClient::new(exit)
        },
        refused: None,
        routes: Vec::new(),
        pinned: Vec::new(),
        bypass: None,
    };
    let mut device_name = tunnel.status(own).device;
    if device_name.is_empty() {
        device_name = tunnel.up_with(node, own, device, hook()).await?.device;
    } else {
        let ok = tunnel
            .with_exit(|h, _| {
                if matches!(h, ExitHook::Exit(_)) {
                    return false;
                }
                on_down(h);
                *h = hook();
                true
            })
            .unwrap_or(false);
        if !ok {
            return Err(ApiError::conflict("this node is an exit"));
        }
    }
    if circuit {
        tunnel.circuits.build_exit(node, via, exit).await?;
    }
    // Ask until assigned.
    let start = Instant::now();
    let mut last_request: Option<Instant> = None;
    let assigned = loop {
        let (assigned, refused) = tunnel
            .with_exit(|h, _| match h {
                ExitHook::Client {
                    client, refused, ..
                } => (client.assigned, *refused),
                _ => (None, None),
            })
            .unwrap_or((None, None));
        if let Some(a) = assigned {
            break a;
        }
        if let Some(r) = refused {
            return Err(ApiError {
                status: 502,
                message: format!("exit refused (reason {r})"),
            });
        }
        if start.elapsed() > ASSIGN_TIMEOUT {
            return Err(ApiError {
                status: 504,
                message: format!("no address from exit {exit} in {ASSIGN_TIMEOUT:?} (online?)"),
            });
        }
        if last_request.is_none_or(|t| t.elapsed() >= REQUEST_INTERVAL) {
            last_request = Some(Instant::now());
            let msg = ExitControl::Request.encode();
            if circuit {
                let c = std::sync::Arc::clone(&tunnel.circuits);
                let _ = node
                    .call(move |n, now| c.send_keyed(n, now, &exit, &msg))
                    .await;
            } else {
                let _ = node
                    .call(move |n, now| n.send_custom(now, &exit, &msg))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (v4, _, v6) = assigned;
    let internal = |e: String| ApiError {
        status: 500,
        message: e,
    };
    ip_cmd(
        false,
        &["addr", "replace", &format!("{v4}/32"), "dev", &device_name],
    )
    .map_err(internal)?;
    if circuit {
        ip_cmd(
            true,
            &[
                "addr",
                "replace",
                &format!("{v6}/128"),
                "dev",
                &device_name,
                "nodad",
            ],
        )
        .map_err(internal)?;
    }
    // Before any default route goes in: pin the exit's endpoints and our TCP relays outside
    // the tunnel, and keep ferry's own UDP socket on the previous default (policy routing).
    let mut pinned = Vec::new();
    let mut bypass = None;
    if cidrs.iter().any(|c| c.len <= 1) {
        let friends = node
            .call(|n, _| n.friends())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let status = node
            .status()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let mut ips: Vec<IpAddr> = status.tcp_relays.iter().map(|r| r.addr.ip()).collect();
        // The first hop of a circuit, else the exit.
        let peer = first_hop.unwrap_or(exit);
        if let Some(f) = friends.iter().find(|f| f.public_key == peer) {
            ips.extend(
                f.addr
                    .iter()
                    .chain(f.relay.iter().map(|(_, a)| a))
                    .map(|a| a.ip()),
            );
        }
        ips.sort();
        ips.dedup();
        for ip in ips {
            if pin_host_route(&ip).is_ok() {
                pinned.push(ip);
            }
        }
        bypass = Some(Bypass::install(status.local_addr.port()).map_err(internal)?);
    }
    let mut installed = Vec::new();
    for c in &cidrs {
        let src = match c.addr {
            IpAddr::V4(_) => IpAddr::V4(v4),
            IpAddr::V6(_) => IpAddr::V6(v6),
        };
        let (cidr, src) = (c.to_string(), src.to_string());
        let mtu = ferry_tunnel::circuit::CIRCUIT_MTU.to_string();
        let mut args = vec![
            "route",
            "replace",
            cidr.as_str(),
            "dev",
            &device_name,
            "src",
            src.as_str(),
        ];
        if circuit {
            // A data cell carries at most CIRCUIT_MTU bytes of IP packet.
            args.extend(["mtu", mtu.as_str()]);
        }
        ip_cmd(c.addr.is_ipv6(), &args).map_err(internal)?;
        installed.push(*c);
    }
    tunnel.with_exit(|h, _| {
        if let ExitHook::Client {
            routes,
            pinned: p,
            bypass: b,
            ..
        } = h
        {
            *routes = installed;
            *p = pinned;
            *b = bypass;
        }
    });
    tracing::info!(%exit, %v4, %v6, circuit, "exit client up");
    Ok(tunnel.status(own))
}

/// `POST /v1/tunnel/down` hook: an exit's tunnel stays up while `ferry up --exit-node` runs;
/// a client gives its addresses back to its exit ([`ExitControl::Release`], best effort).
///
/// # Errors
/// 409 on an exit node.
pub async fn before_down(tunnel: &TunnelShared, node: &NodeHandle) -> Result<(), ApiError> {
    let role = tunnel.with_exit(|h, _| match h {
        ExitHook::Exit(_) => Err(()),
        ExitHook::Client { client, .. } => Ok(Some(client.exit)),
        ExitHook::None => Ok(None),
    });
    match role {
        Some(Err(())) => Err(ApiError::conflict(
            "this node is an exit: its tunnel goes down with `ferry stop`",
        )),
        Some(Ok(Some(exit))) => {
            let msg = ExitControl::Release.encode();
            let c = std::sync::Arc::clone(&tunnel.circuits);
            let _ = node
                .call(move |n, now| {
                    // Through the exit circuit when there is one (then the exit also releases
                    // when the circuit closes), else the friend session.
                    if !c.send_keyed(n, now, &exit, &msg) {
                        let _ = n.send_custom(now, &exit, &msg);
                    }
                })
                .await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `ip route replace IP/32 via GW dev DEV` from what `ip route get IP` says now.
fn pin_host_route(ip: &IpAddr) -> Result<(), String> {
    let out = ip_cmd(ip.is_ipv6(), &["route", "get", &ip.to_string()])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1).copied())
    };
    let dev = after("dev").ok_or("no dev in ip route get")?;
    let host = host_cidr(ip);
    let mut args = vec!["route", "replace", host.as_str()];
    if let Some(via) = after("via") {
        args.extend(["via", via]);
    }
    args.extend(["dev", dev]);
    ip_cmd(ip.is_ipv6(), &args).map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn policy_file_parses_strings_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(
            &p,
            r#"
[[allow]]
cidr = "10.0.0.0/8"
protocol = "tcp"
ports = "80, 8000-8100"
[[allow]]
cidr = "2001:db8::/32"
ports = [53, "5000-5001"]
[[allow]]
cidr = "0.0.0.0/0"
protocol = "icmp"
"#,
        )
        .unwrap();
        let pol = load_policy(&p).unwrap();
        assert!(!pol.default_allow);
        assert_eq!(pol.rules.len(), 3);
        assert_eq!(pol.rules[0].ports, vec![(80, 80), (8000, 8100)]);
        assert_eq!(pol.rules[1].ports, vec![(53, 53), (5000, 5001)]);
        // Unknown keys and bad rules are errors, not silently allowed.
        std::fs::write(&p, "[[allow]]\ncidr = \"10.0.0.0/8\"\nport = \"80\"\n").unwrap();
        assert!(load_policy(&p).is_err());
        std::fs::write(&p, "[[allow]]\ncidr = \"10.0.0.0/40\"\n").unwrap();
        assert!(load_policy(&p).is_err());
        // An empty file denies everything.
        std::fs::write(&p, "").unwrap();
        let none = load_policy(&p).unwrap();
        assert!(none.rules.is_empty() && !none.default_allow);
    }

    #[test]
    fn bypass_rules_name_the_port_and_table() {
        let b = Bypass { udp_port: 33445 };
        assert_eq!(
            b.rule_args(false).join(" "),
            "rule add pref 5446 ipproto udp sport 33445 lookup main suppress_prefixlength 1"
        );
        assert_eq!(
            b.rule_args(true).join(" "),
            "rule add pref 5447 ipproto udp sport 33445 lookup 21574"
        );
    }
}
