//! `ferry up`: run the node in the foreground until SIGINT/SIGTERM (or `POST /v1/shutdown`), on
//! one UDP socket, serving the control API on `<profile>/ferry.sock`.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_api::{
    AddFriend, ApiError, Backend, BootstrapRequest, BoxFuture, CustomPacket, DhtNode, FileAction,
    FileTransfer, Friend, FriendKey, FriendRequest, ListMessages, ListPackets, LookupRequest,
    LookupResult, Message, ReceivedPacket, RelayStatus, SelfInfo, SelfUpdate, SendFile,
    SendMessage, SetAvatar, Status, Typing,
};
use ferry_crypto::{KeyPair, PublicKey};
use ferry_net::{
    NodeHandle, NodeOptions, PortSpec, RelayServerHandle, bind_udp, spawn_node_with_dht_keys,
    spawn_relay_server,
};
use ferry_proto::dht::DhtConfig;
use ferry_proto::node::FileCommand;
use tokio::sync::Notify;

use crate::bootstrap::{BootstrapNode, default_nodes};
use crate::chat::{ChatHandler, ChatShared};
use crate::profile::{self, Identity};

/// Options of `ferry up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// UDP port; `None` = first free of 33445..=33545.
    pub udp_port: Option<u16>,
    /// Address to bind (default `::`, dual-stack).
    pub bind: IpAddr,
    /// Extra bootstrap nodes.
    pub bootstrap: Vec<BootstrapNode>,
    /// Skip the embedded public bootstrap list.
    pub no_default_bootstrap: bool,
    /// Turn LAN discovery off.
    pub no_lan: bool,
    /// TCP ports of the relay server this node offers (empty = none), bound at `bind`.
    pub tcp_relay_ports: Vec<u16>,
    /// Bandwidth per relayed link, bytes/s each direction (0 = unlimited).
    pub relay_link_rate: u32,
    /// Test hook: append what the relay can read of forwarded payloads to this file.
    pub relay_tap_file: Option<PathBuf>,
    /// Our TCP relays (`--relay-peer IP:PORT:KEY`, as `tox_add_tcp_relay`).
    pub relay_peers: Vec<BootstrapNode>,
    /// No UDP traffic at all: friends are reached through relays only (`--no-udp`).
    pub no_udp: bool,
    /// Do not try the embedded public bootstrap nodes as TCP relays (`--no-bootstrap-relays`).
    pub no_bootstrap_relays: bool,
    /// Run as an exit node (`--exit-node --uplink IFACE [--exit-policy FILE]`).
    pub exit: Option<crate::exit::ExitOptions>,
    /// Service node (`--relay-node`, `--exit-node`): the nospam is
    /// [`ferry_tunnel::service_nospam`] of our key (so anyone can befriend us from the key
    /// alone) and every friend request is accepted, up to the friend cap (4096).
    pub service: bool,
    /// Forward other nodes' tunnel circuits (`--relay-node`, [`crate::circuit`]).
    pub relay_node: bool,
    /// `--market ...` flags over the profile's `[market]` table ([`crate::market`]).
    pub market: crate::market::MarketFlags,
    /// `--gateway PORT`: serve broadcast sites over HTTP on 127.0.0.1:PORT
    /// ([`crate::gateway`]; 0 = any free port); `None`: no gateway.
    pub gateway_port: Option<u16>,
    /// `--store-content`: hold pinned content for others even without `[content]
    /// store_for_others = true` ([`crate::replica`]).
    pub store_content: bool,
}

/// The TCP relays a node starts with, in order of preference: every `--relay-peer`, then, unless
/// `--no-default-bootstrap` or `--no-bootstrap-relays`, the embedded public bootstrap nodes on
/// their DHT port. Those run `tox-bootstrapd`, whose default config serves a TCP relay on that
/// port with the DHT key (as qTox and toxic add bootstrap nodes with `tox_add_tcp_relay`); a node
/// that does not only costs a refused connect, retried with backoff (5 s doubling to 2 min).
/// Relays past the first 3 that work stay known but unconnected (`tcp_connection`).
pub fn relay_candidates(opts: &UpOptions) -> Vec<(std::net::SocketAddr, PublicKey)> {
    let mut v: Vec<(std::net::SocketAddr, PublicKey)> = opts
        .relay_peers
        .iter()
        .map(|b| (b.addr, b.public_key))
        .collect();
    if !opts.no_default_bootstrap && !opts.no_bootstrap_relays {
        for b in default_nodes() {
            if !v.iter().any(|(_, k)| *k == b.public_key) {
                v.push((b.addr, b.public_key));
            }
        }
    }
    v
}

/// A relay as the CLI shows it and `--relay-peer` takes it: `IP:PORT:KEY` (IPv6 as
/// `[IP]:PORT:KEY`).
pub fn format_relay(addr: std::net::SocketAddr, public_key: &PublicKey) -> String {
    format!("{addr}:{}", public_key.to_hex())
}

/// Default bandwidth per relayed link: 32 KiB/s each direction ([`ferry_relay::DEFAULT_LINK_RATE`]).
pub const DEFAULT_RELAY_LINK_RATE: u32 = ferry_relay::DEFAULT_LINK_RATE;

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            udp_port: None,
            bind: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            bootstrap: Vec::new(),
            no_default_bootstrap: false,
            no_lan: false,
            tcp_relay_ports: Vec::new(),
            relay_link_rate: DEFAULT_RELAY_LINK_RATE,
            relay_tap_file: None,
            relay_peers: Vec::new(),
            no_udp: false,
            no_bootstrap_relays: false,
            exit: None,
            service: false,
            relay_node: false,
            market: crate::market::MarketFlags::default(),
            gateway_port: None,
            store_content: false,
        }
    }
}

/// How long `tunnel up` waits for an exit or first relay it befriends by key to come online.
pub const SERVICE_ONLINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest lookup wait the API accepts, in ms.
pub const MAX_LOOKUP_TIMEOUT_MS: u64 = 600_000;
/// Lookup wait when none is given, in ms.
pub const DEFAULT_LOOKUP_TIMEOUT_MS: u64 = 30_000;

/// The control-API backend of a running node.
#[derive(Debug)]
pub struct NodeBackend {
    node: NodeHandle,
    identity: Identity,
    stop: Arc<Notify>,
    chat: Option<Arc<ChatShared>>,
    relay: Option<RelayServerHandle>,
    channels: Option<Arc<crate::channel::ChannelShared>>,
}

impl NodeBackend {
    /// A backend over a running node; `stop` is notified by `POST /v1/shutdown`.
    pub fn new(node: NodeHandle, identity: Identity, stop: Arc<Notify>) -> Self {
        Self {
            node,
            identity,
            stop,
            chat: None,
            relay: None,
            channels: None,
        }
    }

    /// Adds the TCP relay server's status to the API.
    pub fn with_relay(mut self, relay: RelayServerHandle) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Adds channels ([`crate::channel`]) to the API.
    pub fn with_channels(mut self, channels: Arc<crate::channel::ChannelShared>) -> Self {
        self.channels = Some(channels);
        self
    }

    fn channels(&self) -> Result<&Arc<crate::channel::ChannelShared>, ApiError> {
        self.channels
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this node has no channels"))
    }

    /// Adds friends and chat (the profile's store) to the API.
    pub fn with_chat(mut self, chat: Arc<ChatShared>) -> Self {
        self.chat = Some(chat);
        self
    }

    fn data(&self) -> Result<Arc<crate::data::DataShared>, ApiError> {
        self.chat()?
            .data
            .get()
            .cloned()
            .ok_or_else(|| ApiError::not_found("this node has no value store"))
    }

    fn content(&self) -> Result<Arc<crate::content::ContentShared>, ApiError> {
        self.chat()?
            .content
            .get()
            .cloned()
            .ok_or_else(|| ApiError::not_found("this node has no content store"))
    }

    fn streams(&self) -> Result<Arc<crate::stream::StreamShared>, ApiError> {
        self.chat()?
            .stream
            .get()
            .cloned()
            .ok_or_else(|| ApiError::not_found("this node has no stream host"))
    }

    fn chat(&self) -> Result<&Arc<ChatShared>, ApiError> {
        self.chat
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this node has no profile store"))
    }

    /// `tunnel up` with `tap`: the tunnel as without it, then the TAP device ([`crate::tap`]);
    /// a TAP failure takes the tunnel down again.
    async fn tunnel_up_tap(
        &self,
        req: ferry_api::TunnelUp,
    ) -> Result<ferry_api::TunnelStatus, ApiError> {
        // A bad TAP name fails before the TUN device exists.
        let tap_device = Some(crate::tap::check_name(req.tap_device.clone())?);
        self.tunnel_up(ferry_api::TunnelUp { tap: false, ..req })
            .await?;
        let chat = self.chat()?;
        if let Err(e) = chat.tunnel.tap.up(&self.node, tap_device).await {
            let _ = self.tunnel_down(ferry_api::TunnelDown {}).await;
            return Err(e);
        }
        Ok(chat.tunnel.status(self.identity.public_key()))
    }
}

fn stopped(e: ferry_net::NetError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

impl Backend for NodeBackend {
    fn status(&self) -> BoxFuture<'_, Result<Status, ApiError>> {
        Box::pin(async move {
            let s = self.node.status().await.map_err(stopped)?;
            Ok(Status {
                dht_public_key: s.dht_public_key.to_hex(),
                public_key: self.identity.public_key().to_hex(),
                tox_id: self.identity.tox_id().to_string(),
                udp_port: s.local_addr.port(),
                connection: if s.connected {
                    "udp"
                } else if s.tcp_relays.iter().any(|r| r.ready) {
                    "tcp"
                } else {
                    "none"
                }
                .to_string(),
                relays: s
                    .tcp_relays
                    .iter()
                    .map(|r| ferry_api::TcpRelay {
                        relay: format_relay(r.addr, &r.public_key),
                        connected: r.ready,
                        own: r.base,
                    })
                    .collect(),
                onion_connected: s.onion_connected,
                close_nodes: s.close_nodes,
                uptime_ms: s.uptime.as_millis() as u64,
                packets_in: s.stats.rx_packets,
                packets_out: s.stats.tx_packets,
                malformed_dropped: s.stats.malformed,
                version: crate::VERSION.to_string(),
            })
        })
    }

    fn dht_nodes(&self) -> BoxFuture<'_, Result<Vec<DhtNode>, ApiError>> {
        Box::pin(async move {
            let nodes = self.node.close_nodes().await.map_err(stopped)?;
            Ok(nodes
                .into_iter()
                .map(|n| DhtNode {
                    public_key: n.public_key.to_hex(),
                    address: n.addr.to_string(),
                    last_seen_ms: n.last_seen.as_millis() as u64,
                })
                .collect())
        })
    }

    fn bootstrap(&self, req: BootstrapRequest) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let node: BootstrapNode = format!("{}:{}", req.address, req.public_key)
                .parse()
                .map_err(|e: crate::bootstrap::BootstrapParseError| {
                    ApiError::bad_request(e.to_string())
                })?;
            self.node
                .bootstrap(node.addr, node.public_key)
                .await
                .map_err(stopped)
        })
    }

    fn lookup(&self, req: LookupRequest) -> BoxFuture<'_, Result<LookupResult, ApiError>> {
        Box::pin(async move {
            let pk = PublicKey::from_hex(&req.public_key)
                .map_err(|e| ApiError::bad_request(format!("bad DHT public key: {e}")))?;
            let timeout = Duration::from_millis(
                req.timeout_ms
                    .unwrap_or(DEFAULT_LOOKUP_TIMEOUT_MS)
                    .min(MAX_LOOKUP_TIMEOUT_MS),
            );
            let started = Instant::now();
            let existed = self
                .node
                .search_status(pk)
                .await
                .map_err(stopped)?
                .is_some();
            self.node
                .add_search(pk)
                .await
                .map_err(stopped)?
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut found = None;
            while started.elapsed() < timeout {
                if let Some(addr) = self
                    .node
                    .search_status(pk)
                    .await
                    .map_err(stopped)?
                    .and_then(|s| s.found)
                {
                    found = Some(addr);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if !existed {
                self.node.remove_search(pk).await.map_err(stopped)?;
            }
            Ok(LookupResult {
                public_key: pk.to_hex(),
                found: found.is_some(),
                address: found.map(|a| a.to_string()),
                elapsed_ms: started.elapsed().as_millis() as u64,
            })
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.stop.notify_one() })
    }

    fn self_info(&self) -> BoxFuture<'_, Result<SelfInfo, ApiError>> {
        Box::pin(async move { self.chat()?.self_info() })
    }

    fn set_self(&self, req: SelfUpdate) -> BoxFuture<'_, Result<SelfInfo, ApiError>> {
        Box::pin(async move { self.chat()?.set_self(&self.node, req).await })
    }

    fn friends(&self) -> BoxFuture<'_, Result<Vec<Friend>, ApiError>> {
        Box::pin(async move { self.chat()?.friends(&self.node).await })
    }

    fn add_friend(&self, req: AddFriend) -> BoxFuture<'_, Result<Friend, ApiError>> {
        Box::pin(async move { self.chat()?.add_friend(&self.node, req).await })
    }

    fn friend_requests(&self) -> BoxFuture<'_, Result<Vec<FriendRequest>, ApiError>> {
        Box::pin(async move { self.chat()?.requests() })
    }

    fn accept_friend(&self, req: FriendKey) -> BoxFuture<'_, Result<Friend, ApiError>> {
        Box::pin(async move { self.chat()?.accept(&self.node, &req.public_key).await })
    }

    fn reject_friend(&self, req: FriendKey) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.chat()?.reject(&req.public_key) })
    }

    fn remove_friend(&self, req: FriendKey) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.chat()?.remove(&self.node, &req.public_key).await })
    }

    fn custom_packet(&self, req: CustomPacket) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.chat()?.custom_packet(&self.node, req).await })
    }

    fn typing(&self, req: Typing) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.chat()?.typing(&self.node, req).await })
    }

    fn send_message(&self, req: SendMessage) -> BoxFuture<'_, Result<Message, ApiError>> {
        Box::pin(async move { self.chat()?.send(&self.node, req).await })
    }

    fn messages(&self, req: ListMessages) -> BoxFuture<'_, Result<Vec<Message>, ApiError>> {
        Box::pin(async move { self.chat()?.list(req).await })
    }

    fn relay_status(&self) -> BoxFuture<'_, Result<RelayStatus, ApiError>> {
        Box::pin(async move {
            let Some(r) = &self.relay else {
                return Ok(RelayStatus::default());
            };
            let s = r.stats().await.map_err(stopped)?;
            Ok(RelayStatus {
                enabled: true,
                public_key: r.public_key().to_hex(),
                ports: r.ports().to_vec(),
                clients: s.clients,
                unconfirmed: s.unconfirmed,
                links: s.links,
                bytes_relayed: s.bytes_relayed,
                packets_relayed: s.packets_relayed,
                bytes_rate_limited: s.bytes_rate_limited,
                link_rate: r.link_rate(),
                onion_dropped: s.onion_dropped,
                onion_requests: s.onion_requests,
                protocol_errors: s.protocol_errors,
            })
        })
    }

    fn packets(&self, req: ListPackets) -> BoxFuture<'_, Result<Vec<ReceivedPacket>, ApiError>> {
        Box::pin(async move { self.chat()?.packets(req).await })
    }

    fn files(&self) -> BoxFuture<'_, Result<Vec<FileTransfer>, ApiError>> {
        Box::pin(async move { self.chat()?.files_list() })
    }

    fn send_file(&self, req: SendFile) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        Box::pin(async move { self.chat()?.files_send(&self.node, req).await })
    }

    fn accept_file(&self, req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        Box::pin(async move { self.chat()?.files_accept(&self.node, req).await })
    }

    fn cancel_file(&self, req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        Box::pin(async move {
            self.chat()?
                .files_control(&self.node, req.id, FileCommand::Kill)
                .await
        })
    }

    fn pause_file(&self, req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        Box::pin(async move {
            self.chat()?
                .files_control(&self.node, req.id, FileCommand::Pause)
                .await
        })
    }

    fn resume_file(&self, req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        Box::pin(async move {
            self.chat()?
                .files_control(&self.node, req.id, FileCommand::Accept)
                .await
        })
    }

    fn tunnel_up(
        &self,
        req: ferry_api::TunnelUp,
    ) -> BoxFuture<'_, Result<ferry_api::TunnelStatus, ApiError>> {
        Box::pin(async move {
            if let Some(p) = &req.max_price {
                self.chat()?.tunnel.market.set_max_price(p)?;
            }
            if req.tap {
                return self.tunnel_up_tap(req).await;
            }
            let own = self.identity.public_key();
            let chat = self.chat()?;
            let tunnel = &chat.tunnel;
            let device = req.device.clone();
            let dev_name = device
                .clone()
                .unwrap_or_else(|| crate::tunnel::DEFAULT_DEVICE.into());
            // An exit or first relay named by key alone: befriend it as a service node.
            let first = req.via.first().or(req.exit.as_ref());
            if let Some(Ok(first)) = first.map(|k| PublicKey::from_hex(k)) {
                chat.ensure_service_friend_online(&self.node, first, SERVICE_ONLINE_TIMEOUT)
                    .await?;
            }
            if req.via.is_empty() {
                let status = match &req.exit {
                    Some(exit) => {
                        crate::exit::client_up(
                            tunnel,
                            &self.node,
                            own,
                            req.device,
                            exit,
                            &req.routes,
                        )
                        .await?
                    }
                    None if !req.routes.is_empty() => {
                        return Err(ApiError::bad_request("--route needs --exit"));
                    }
                    None => tunnel.up(&self.node, own, req.device).await?,
                };
                // Any node with its tunnel up can be the far end of someone's circuit.
                tunnel.circuits.set_end(&self.node, Some(dev_name)).await;
                return Ok(status);
            }
            let exit = req
                .exit
                .as_deref()
                .map(PublicKey::from_hex)
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("--exit: {e}")))?;
            let via = req
                .via
                .iter()
                .map(|k| PublicKey::from_hex(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::bad_request(format!("--via: {e}")))?;
            let Some(end) = exit else {
                return Err(ApiError::bad_request("--via needs --exit (the far end)"));
            };
            // An exit node at the far end: exit routing through an anonymous circuit (without
            // --route: the default routes). A plain mesh peer refuses anonymous circuits; then,
            // without --route, the circuit carries traffic to its mesh address only.
            let routes = if req.routes.is_empty() {
                vec!["0.0.0.0/0".to_string(), "::/0".to_string()]
            } else {
                req.routes.clone()
            };
            let exit_hex = end.to_hex();
            match crate::exit::client_up_via(
                tunnel,
                &self.node,
                own,
                req.device.clone(),
                &exit_hex,
                &routes,
                via.clone(),
            )
            .await
            {
                Ok(status) => {
                    tunnel.circuits.set_end(&self.node, Some(dev_name)).await;
                    let _ = status;
                    return Ok(tunnel.status(own));
                }
                Err(e) => {
                    let not_exit = e.status == 502
                        && e.message.contains(
                            &ferry_tunnel::circuit::DestroyReason::NotAccepting.to_string(),
                        );
                    if !(not_exit && req.routes.is_empty()) {
                        let _ = tunnel.down();
                        tunnel.circuits.set_end(&self.node, None).await;
                        return Err(e);
                    }
                    // Keep the device (a TUN device cannot be re-created at once): drop only
                    // the exit role.
                    tunnel.with_exit(|h, _| {
                        crate::exit::on_down(h);
                        *h = crate::exit::ExitHook::None;
                    });
                }
            }
            if tunnel.status(own).device.is_empty() {
                tunnel.up(&self.node, own, req.device).await?;
            }
            let circuits = &tunnel.circuits;
            circuits.set_end(&self.node, Some(dev_name)).await;
            if let Err(e) = circuits.build(&self.node, via, end).await {
                let _ = tunnel.down();
                circuits.set_end(&self.node, None).await;
                return Err(e);
            }
            crate::circuit::CircuitDriver::route_mtu(
                device.as_deref().unwrap_or(crate::tunnel::DEFAULT_DEVICE),
                &end,
            );
            Ok(tunnel.status(own))
        })
    }

    fn tunnel_down(&self, _req: ferry_api::TunnelDown) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let chat = self.chat()?;
            let tunnel = &chat.tunnel;
            crate::exit::before_down(tunnel, &self.node).await?;
            tunnel.down()?;
            tunnel.circuits.set_end(&self.node, None).await;
            Ok(())
        })
    }

    fn tunnel_status(&self) -> BoxFuture<'_, Result<ferry_api::TunnelStatus, ApiError>> {
        Box::pin(async move {
            let own = self.identity.public_key();
            let mut s = self.chat()?.tunnel.status(own);
            let dp = self
                .node
                .call(|n, _| n.dataplane_stats())
                .await
                .map_err(stopped)?;
            s.dataplane = ferry_api::DataPlaneStatus {
                sessions: dp.sessions as u64,
                handshakes: dp.handshakes,
                dropped: dp.dropped,
            };
            Ok(s)
        })
    }

    fn set_avatar(&self, req: SetAvatar) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.chat()?.files_set_avatar(&self.node, req.path).await })
    }

    fn wallet(&self) -> BoxFuture<'_, Result<ferry_api::Wallet, ApiError>> {
        Box::pin(async move { self.chat()?.tunnel.market.wallet().await })
    }

    fn wallet_deposit(
        &self,
        req: ferry_api::WalletDeposit,
    ) -> BoxFuture<'_, Result<ferry_api::Wallet, ApiError>> {
        Box::pin(async move {
            self.chat()?
                .tunnel
                .market
                .deposit(&req.peer, &req.amount)
                .await
        })
    }

    fn store_status(&self) -> BoxFuture<'_, Result<ferry_api::StoreStatus, ApiError>> {
        Box::pin(async move { Ok(self.data()?.status()) })
    }

    fn content_publish(
        &self,
        req: ferry_api::ContentPublish,
    ) -> BoxFuture<'_, Result<ferry_api::ContentPublished, ApiError>> {
        Box::pin(async move {
            let data = self.data().ok();
            self.content()?.publish(&self.node, data, req).await
        })
    }

    fn content_fetch(
        &self,
        req: ferry_api::ContentFetch,
    ) -> BoxFuture<'_, Result<ferry_api::ContentJob, ApiError>> {
        Box::pin(async move {
            let data = self.data().ok();
            self.content()?.fetch(&self.node, data, req).await
        })
    }

    fn content_job(
        &self,
        req: ferry_api::ContentJobQuery,
    ) -> BoxFuture<'_, Result<ferry_api::ContentJob, ApiError>> {
        Box::pin(async move { self.content()?.job(req.job) })
    }

    fn stream_publish(
        &self,
        req: ferry_api::StreamPublish,
    ) -> BoxFuture<'_, Result<ferry_api::StreamInfo, ApiError>> {
        Box::pin(async move {
            let data = self.data().ok();
            self.streams()?.publish(&self.node, data, req.name).await
        })
    }

    fn stream_push(
        &self,
        req: ferry_api::StreamPush,
    ) -> BoxFuture<'_, Result<ferry_api::StreamStatus, ApiError>> {
        Box::pin(async move { self.streams()?.push(&self.node, req).await })
    }

    fn stream_watch(
        &self,
        req: ferry_api::StreamWatch,
    ) -> BoxFuture<'_, Result<ferry_api::StreamInfo, ApiError>> {
        Box::pin(async move {
            let data = self.data().ok();
            self.streams()?.watch(&self.node, data, req.stream).await
        })
    }

    fn stream_read(
        &self,
        req: ferry_api::StreamRead,
    ) -> BoxFuture<'_, Result<ferry_api::StreamChunk, ApiError>> {
        Box::pin(async move { self.streams()?.read(req).await })
    }

    fn stream_status(
        &self,
        req: ferry_api::StreamQuery,
    ) -> BoxFuture<'_, Result<ferry_api::StreamStatus, ApiError>> {
        Box::pin(async move { self.streams()?.status(&req.id) })
    }

    fn stream_close(&self, req: ferry_api::StreamQuery) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.streams()?.close(&self.node, &req.id).await })
    }

    fn content_pin(
        &self,
        req: ferry_api::ContentPin,
    ) -> BoxFuture<'_, Result<ferry_api::PinStatus, ApiError>> {
        Box::pin(async move {
            let r = self
                .chat()?
                .replica
                .get()
                .cloned()
                .ok_or_else(|| ApiError::not_found("this node has no replication"))?;
            r.pin(&self.node, &self.content()?, req).await
        })
    }

    fn content_pins(&self) -> BoxFuture<'_, Result<Vec<ferry_api::PinStatus>, ApiError>> {
        Box::pin(async move {
            Ok(self
                .chat()?
                .replica
                .get()
                .map(|r| r.pins())
                .unwrap_or_default())
        })
    }

    fn content_credits(&self) -> BoxFuture<'_, Result<Vec<ferry_api::CreditAccount>, ApiError>> {
        Box::pin(async move { Ok(self.content()?.credits()) })
    }

    fn site_publish(
        &self,
        req: ferry_api::SitePublish,
    ) -> BoxFuture<'_, Result<ferry_api::SiteInfo, ApiError>> {
        Box::pin(async move {
            crate::gateway::publish(&self.node, &self.data()?, &self.content()?, req).await
        })
    }

    fn site_resolve(
        &self,
        req: ferry_api::NameRequest,
    ) -> BoxFuture<'_, Result<ferry_api::SiteInfo, ApiError>> {
        Box::pin(async move { crate::gateway::resolve(&self.node, &self.data()?, &req.name).await })
    }

    fn dht_put(
        &self,
        req: ferry_api::DhtPut,
    ) -> BoxFuture<'_, Result<ferry_api::DhtPutResult, ApiError>> {
        Box::pin(async move { self.data()?.dht_put(&self.node, req).await })
    }

    fn dht_get(
        &self,
        req: ferry_api::DhtGet,
    ) -> BoxFuture<'_, Result<ferry_api::DhtGetResult, ApiError>> {
        Box::pin(async move { self.data()?.dht_get(&self.node, req).await })
    }

    fn name_register(
        &self,
        req: ferry_api::NameRequest,
    ) -> BoxFuture<'_, Result<ferry_api::NameInfo, ApiError>> {
        Box::pin(async move {
            let tox_id = self.identity.tox_id();
            self.data()?.name_register(&self.node, tox_id, req).await
        })
    }

    fn name_resolve(
        &self,
        req: ferry_api::NameRequest,
    ) -> BoxFuture<'_, Result<ferry_api::NameInfo, ApiError>> {
        Box::pin(async move { self.data()?.name_resolve(&self.node, req).await })
    }

    fn channel_create(
        &self,
        req: ferry_api::ChannelCreate,
    ) -> BoxFuture<'_, Result<ferry_api::ChannelInfo, ApiError>> {
        Box::pin(async move { self.channels()?.create(req).await })
    }

    fn channel_join(
        &self,
        req: ferry_api::ChannelRef,
    ) -> BoxFuture<'_, Result<ferry_api::ChannelInfo, ApiError>> {
        Box::pin(async move { self.channels()?.join(req).await })
    }

    fn channel_post(
        &self,
        req: ferry_api::ChannelPost,
    ) -> BoxFuture<'_, Result<ferry_api::ChannelPostResult, ApiError>> {
        Box::pin(async move { self.channels()?.post(req).await })
    }

    fn channel_read(
        &self,
        req: ferry_api::ChannelRead,
    ) -> BoxFuture<'_, Result<Vec<ferry_api::ChannelMessage>, ApiError>> {
        Box::pin(async move { self.channels()?.read(req).await })
    }

    fn channel_members(
        &self,
        req: ferry_api::ChannelRef,
    ) -> BoxFuture<'_, Result<ferry_api::ChannelMembers, ApiError>> {
        Box::pin(async move { self.channels()?.members(req).await })
    }

    fn channel_approve(
        &self,
        req: ferry_api::ChannelMemberRequest,
    ) -> BoxFuture<'_, Result<ferry_api::ChannelMembers, ApiError>> {
        Box::pin(async move { self.channels()?.approve(req).await })
    }

    fn channel_remove(
        &self,
        req: ferry_api::ChannelMemberRequest,
    ) -> BoxFuture<'_, Result<ferry_api::ChannelMembers, ApiError>> {
        Box::pin(async move { self.channels()?.remove(req).await })
    }

    fn contracts(&self) -> BoxFuture<'_, Result<Vec<ferry_api::MarketContract>, ApiError>> {
        Box::pin(async move { self.chat()?.tunnel.market.contracts() })
    }

    fn earnings(&self) -> BoxFuture<'_, Result<ferry_api::Earnings, ApiError>> {
        Box::pin(async move { self.chat()?.tunnel.market.earnings() })
    }
}

/// Runs `ferry up` for the profile at `profile_dir` until a signal or an API shutdown.
///
/// # Errors
/// No profile, a daemon already running on this profile, UDP port in use, socket errors.
pub async fn run_up(profile_dir: &Path, opts: UpOptions) -> anyhow::Result<()> {
    let mut identity = profile::load(profile_dir)?;
    let mut market_config = crate::market::MarketConfig::load(profile_dir)?;
    market_config.apply(&opts.market);
    if !market_config.enabled && opts.market != crate::market::MarketFlags::default() {
        eprintln!(
            "ferry up: market flags given but the market is off (add --market or [market] enabled = true)"
        );
    }
    if opts.service {
        // Not stored: the profile keeps its own nospam for when it runs as a plain node.
        identity.nospam = ferry_tunnel::service_nospam(&identity.long_term.public);
    }
    let socket_path: PathBuf = ferry_api::socket_path(profile_dir);
    let listener = ferry_api::bind_socket(&socket_path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                anyhow::anyhow!("{e}; stop it first with `ferry stop`")
            }
            _ => anyhow::anyhow!(
                "cannot create the control socket {}: {e}",
                socket_path.display()
            ),
        })?;
    let _cleanup = RemoveOnDrop(socket_path.clone());
    let port = match opts.udp_port {
        Some(p) => PortSpec::Exact(p),
        None => PortSpec::DefaultRange,
    };
    let udp = match bind_udp(opts.bind, port) {
        Ok(s) => s,
        // No IPv6 on this host: fall back to IPv4 only.
        Err(ferry_net::NetError::Io(_)) if opts.bind == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            bind_udp(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)?
        }
        Err(e) => return Err(e.into()),
    };
    let mut bootstrap: Vec<_> = opts
        .bootstrap
        .iter()
        .map(|b| (b.addr, b.public_key))
        .collect();
    if !opts.no_default_bootstrap {
        bootstrap.extend(default_nodes().into_iter().map(|b| (b.addr, b.public_key)));
    }
    let dht = DhtConfig {
        lan_discovery: !opts.no_lan,
        ..DhtConfig::default()
    };
    let chat = ChatShared::open(profile_dir.to_path_buf(), identity.clone())?;
    chat.set_service(opts.service);
    let options = NodeOptions {
        dht,
        bootstrap,
        real_keys: Some(identity.long_term.clone()),
        nospam: identity.nospam,
        relays: relay_candidates(&opts),
        no_udp: opts.no_udp,
        hosted_relay_port: opts.tcp_relay_ports.first().copied(),
    };
    // A fresh DHT key per start, as c-toxcore; the relay server (if any) uses it too.
    let seed = ferry_crypto::rng::os_seed().map_err(|e| anyhow::anyhow!("OS RNG: {e}"))?;
    let dht_keys = KeyPair::generate(&mut ferry_crypto::rng::FerryRng::from_seed(seed));
    let relay_listeners = if opts.tcp_relay_ports.is_empty() {
        None
    } else {
        let mut listeners = Vec::new();
        for port in &opts.tcp_relay_ports {
            let addr = std::net::SocketAddr::new(opts.bind, *port);
            let l = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(_) if opts.bind == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
                    tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, *port))
                        .await
                        .with_context(|| format!("TCP relay port {port}"))?
                }
                Err(e) => return Err(e).with_context(|| format!("TCP relay port {port}")),
            };
            listeners.push(l);
        }
        Some(listeners)
    };
    let relay_secret = dht_keys.secret.clone();
    let data = crate::data::DataShared::open(
        profile_dir,
        identity.long_term.clone(),
        &dht_keys,
        ferry_crypto::rng::FerryRng::from_seed(
            ferry_crypto::rng::os_seed().map_err(|e| anyhow::anyhow!("OS RNG: {e}"))?,
        ),
    )?;
    let _ = chat.data.set(Arc::clone(&data));
    let content = crate::content::ContentShared::open(profile_dir, identity.public_key())?;
    content.set_signer(ferry_market::NodeSigner::from_long_term_secret(
        &identity.long_term.secret.to_bytes(),
    ));
    let _ = chat.content.set(Arc::clone(&content));
    let streams = crate::stream::StreamShared::new(
        identity.public_key(),
        identity.long_term.secret.to_bytes(),
    );
    let _ = chat.stream.set(Arc::clone(&streams));
    let (node, join) =
        spawn_node_with_dht_keys(udp, options, dht_keys, ChatHandler(Arc::clone(&chat)))
            .context("starting the node")?;
    let relay = match relay_listeners {
        None => None,
        Some(listeners) => {
            let config = ferry_relay::RelayConfig {
                link_rate: opts.relay_link_rate,
                tap_bytes: if opts.relay_tap_file.is_some() {
                    16 << 20
                } else {
                    0
                },
                ..ferry_relay::RelayConfig::default()
            };
            Some(spawn_relay_server(
                listeners,
                relay_secret,
                config,
                opts.relay_tap_file.clone(),
                Some(node.clone()),
            )?)
        }
    };
    chat.restore(&node).await?;
    let data_timer = crate::data::spawn_timer(
        Arc::clone(&data),
        Arc::clone(&chat),
        node.clone(),
        identity.tox_id(),
    );
    let channels = crate::channel::ChannelShared::open(
        profile_dir,
        identity.long_term.clone(),
        Arc::clone(&data),
        node.clone(),
        ferry_crypto::rng::FerryRng::from_seed(
            ferry_crypto::rng::os_seed().map_err(|e| anyhow::anyhow!("OS RNG: {e}"))?,
        ),
    );
    let _ = chat.channels.set(Arc::clone(&channels));
    let channel_sync = crate::channel::spawn_sync(Arc::clone(&channels));
    let content_timer =
        crate::content::spawn_timer(Arc::clone(&content), Arc::clone(&data), node.clone());
    let stream_timer = crate::stream::spawn_timer(Arc::clone(&streams), node.clone());
    let replica = crate::replica::ReplicaShared::new(
        profile_dir,
        opts.store_content,
        identity.public_key(),
        ferry_crypto::rng::FerryRng::from_seed(
            ferry_crypto::rng::os_seed().map_err(|e| anyhow::anyhow!("OS RNG: {e}"))?,
        ),
    );
    let _ = chat.replica.set(Arc::clone(&replica));
    let replica_timer = crate::replica::spawn_timer(
        replica,
        Arc::clone(&content),
        Arc::clone(&data),
        node.clone(),
    );
    let gateway = match opts.gateway_port {
        Some(port) => {
            let (addr, task) = crate::gateway::spawn(
                port,
                node.clone(),
                Arc::clone(&data),
                Arc::clone(&content),
                profile_dir,
            )
            .await?;
            eprintln!("site gateway: http://{addr}/site/NAME/");
            Some(task)
        }
        None => None,
    };
    let market_task = crate::market::start(
        &chat.tunnel.market,
        market_config,
        profile_dir,
        &identity.long_term.secret.to_bytes(),
        opts.service,
        node.clone(),
    )
    .await?;
    chat.tunnel.circuits.start(
        &node,
        identity.long_term.clone(),
        opts.relay_node,
        chat.tunnel.market.clone(),
    )?;
    let status = node.status().await?;
    let mut exit_fw = match &opts.exit {
        Some(x) => Some(
            crate::exit::start_exit(
                &chat.tunnel,
                &node,
                identity.public_key(),
                x,
                status.local_addr.port(),
            )
            .await?,
        ),
        None => None,
    };
    eprintln!(
        "ferry up: Tox ID {}\n  DHT key {}  UDP {}  control socket {}",
        identity.tox_id(),
        status.dht_public_key,
        status.local_addr,
        socket_path.display()
    );
    let stop = Arc::new(Notify::new());
    let market = chat.tunnel.market.clone();
    let mut backend = NodeBackend::new(node.clone(), identity, stop.clone())
        .with_chat(chat)
        .with_channels(channels);
    if let Some((r, _)) = &relay {
        let ports: Vec<String> = r.ports().iter().map(u16::to_string).collect();
        eprintln!(
            "  TCP relay on port(s) {} (key = DHT key {}, {} B/s per link)",
            ports.join(","),
            r.public_key(),
            r.link_rate()
        );
        backend = backend.with_relay(r.clone());
    }
    let backend = Arc::new(backend);
    let shutdown = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.notified() => {}
                _ = shutdown_signal() => {}
            }
        }
    };
    ferry_api::serve(listener, ferry_api::router(backend), shutdown)
        .await
        .context("control API")?;
    if let Some(fw) = exit_fw.as_mut() {
        fw.teardown();
    }
    if let Some(t) = market_task {
        t.abort();
        // Redeem the newest vouchers before going away (bounded: a remote ledger may hang).
        let _ =
            tokio::time::timeout(crate::market::SHUTDOWN_CLAIM_TIMEOUT, market.claim_all()).await;
        market.save();
    }
    data_timer.abort();
    channel_sync.abort();
    content_timer.abort();
    stream_timer.abort();
    replica_timer.abort();
    if let Some(g) = gateway {
        g.abort();
    }
    {
        let d = Arc::clone(&data);
        let _ = node.call(move |n, _| d.goodbye(n)).await;
        // Let the node task flush the goodbyes before it is told to stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    data.save(true);
    if let Some((r, j)) = relay {
        r.shutdown().await;
        let _ = j.await;
    }
    node.shutdown().await;
    let _ = join.await;
    eprintln!("ferry up: stopped");
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_candidates_put_relay_peers_first_then_bootstrap_nodes() {
        let peer: BootstrapNode =
            "127.0.0.1:4000:7E5668E0EE09E19F320AD47902419331FFEE147BB3606769CFBE921A2A2FD34C"
                .parse()
                .expect("node");
        let opts = UpOptions {
            relay_peers: vec![peer],
            ..UpOptions::default()
        };
        let v = relay_candidates(&opts);
        let defaults = default_nodes();
        // The peer's key is also a default node's: listed once, at the peer's address.
        assert_eq!(v[0], (peer.addr, peer.public_key));
        assert_eq!(v.len(), defaults.len());
        assert!(
            defaults[1..]
                .iter()
                .all(|d| v.contains(&(d.addr, d.public_key)))
        );

        let off = UpOptions {
            relay_peers: vec![peer],
            no_bootstrap_relays: true,
            ..UpOptions::default()
        };
        assert_eq!(relay_candidates(&off), vec![(peer.addr, peer.public_key)]);
        let no_default = UpOptions {
            no_default_bootstrap: true,
            ..UpOptions::default()
        };
        assert!(relay_candidates(&no_default).is_empty());
    }
}
