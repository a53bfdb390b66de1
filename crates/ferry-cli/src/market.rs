//! `ferry wallet|contracts|earnings` and the `ferry up --market ...` flags (issue 8).

use clap::{Args, Subcommand};
use ferry_api::Client;
use ferry_daemon::market::{BackendChoice, MarketFlags};

/// `ferry up` market flags; each overrides the `[market]` key of the same name in
/// `<profile>/config.toml`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct MarketArgs {
    /// Take part in paid forwarding: relays and exits charge, tunnel clients pay
    /// (`[market] enabled = true`; default off).
    #[arg(long)]
    pub(crate) market: bool,
    /// Price asked per KiB forwarded (relay/exit), wei (default 1000000000).
    #[arg(long, value_name = "WEI")]
    pub(crate) price_per_kib: Option<u64>,
    /// Highest price per KiB accepted as a client, wei (default 2000000000).
    #[arg(long, value_name = "WEI")]
    pub(crate) max_price_per_kib: Option<u64>,
    /// Data one contract covers, KiB (default 1048576).
    #[arg(long, value_name = "KIB")]
    pub(crate) contract_data_kib: Option<u64>,
    /// How long one contract lasts, s (default 3600).
    #[arg(long, value_name = "S")]
    pub(crate) contract_time_s: Option<u64>,
    /// Renew a contract when less data than this is left, KiB (default 65536).
    #[arg(long, value_name = "KIB")]
    pub(crate) data_renewal_kib: Option<u64>,
    /// Renew a contract when less time than this is left, s (default 300).
    #[arg(long, value_name = "S")]
    pub(crate) time_renewal_s: Option<u64>,
    /// Credit extended to a client before payment, KiB (default 4096).
    #[arg(long, value_name = "KIB")]
    pub(crate) grace_kib: Option<u64>,
    /// Settlement backend: embedded (in-process EVM, ledger in the profile) or json-rpc.
    #[arg(long, value_name = "embedded|json-rpc")]
    pub(crate) market_backend: Option<BackendChoice>,
    /// JSON-RPC endpoint (with --market-backend json-rpc).
    #[arg(long, value_name = "URL")]
    pub(crate) rpc_url: Option<String>,
    /// EVM chain id (default 1717924466, the embedded chain's; Hardhat: 31337).
    #[arg(long, value_name = "N")]
    pub(crate) chain_id: Option<u64>,
    /// UniChannels contract address on the JSON-RPC chain (default: ask the endpoint,
    /// `ferry chain serve` names its own).
    #[arg(long, value_name = "0xADDRESS")]
    pub(crate) hub: Option<String>,
}

impl MarketArgs {
    /// The flags as the daemon takes them.
    pub(crate) fn flags(self) -> MarketFlags {
        MarketFlags {
            enabled: self.market.then_some(true),
            price_per_kib: self.price_per_kib,
            max_price_per_kib: self.max_price_per_kib,
            contract_data_kib: self.contract_data_kib,
            contract_time_s: self.contract_time_s,
            data_renewal_kib: self.data_renewal_kib,
            time_renewal_s: self.time_renewal_s,
            grace_kib: self.grace_kib,
            backend: self.market_backend,
            rpc_url: self.rpc_url,
            chain_id: self.chain_id,
            hub: self.hub,
        }
    }
}

/// `ferry wallet ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum WalletCommand {
    /// Lock AMOUNT wei more in the channel paying PEER (opens one if there is none).
    Deposit {
        /// The relay or exit (long-term public key).
        peer: String,
        /// Wei (decimal).
        amount: String,
        /// JSON output (the wallet).
        #[arg(long)]
        json: bool,
    },
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_wallet(w: &ferry_api::Wallet) {
    println!("address   {}", w.address);
    println!("balance   {} wei", w.balance);
    for c in &w.channels {
        println!(
            "channel   {} peer {}  deposit {}  cumulative {}  claimed {}",
            c.channel_id, c.peer, c.deposit, c.cumulative, c.claimed
        );
    }
}

/// `ferry wallet [--json] [deposit PEER AMOUNT]`.
///
/// # Errors
/// Daemon errors.
pub(crate) async fn wallet(
    c: &Client,
    command: Option<WalletCommand>,
    json: bool,
) -> anyhow::Result<()> {
    let (w, json): (ferry_api::Wallet, bool) = match command {
        None => (c.get("/v1/wallet").await?, json),
        Some(WalletCommand::Deposit {
            peer,
            amount,
            json: j,
        }) => (
            c.post(
                "/v1/wallet/deposit",
                &ferry_api::WalletDeposit { peer, amount },
            )
            .await?,
            json || j,
        ),
    };
    if json {
        print_json(&w)
    } else {
        print_wallet(&w);
        Ok(())
    }
}

/// `ferry contracts [--json]`.
///
/// # Errors
/// Daemon errors.
pub(crate) async fn contracts(c: &Client, json: bool) -> anyhow::Result<()> {
    let v: Vec<ferry_api::MarketContract> = c.get("/v1/contracts").await?;
    if json {
        return print_json(&v);
    }
    if v.is_empty() {
        println!("no contracts");
    }
    for k in &v {
        println!(
            "{:6} {}  {} wei/KiB  {}/{} bytes  until {}  paid {}  owed {}  {}",
            k.role,
            k.peer,
            k.price_per_kib,
            k.data_used_bytes,
            k.data_limit_bytes,
            k.expires_at,
            k.paid,
            k.owed,
            k.state
        );
    }
    Ok(())
}

/// `ferry earnings [--json]`.
///
/// # Errors
/// Daemon errors.
pub(crate) async fn earnings(c: &Client, json: bool) -> anyhow::Result<()> {
    let e: ferry_api::Earnings = c.get("/v1/earnings").await?;
    if json {
        return print_json(&e);
    }
    println!("total      {} wei", e.total);
    println!("claimed    {} wei", e.claimed);
    println!("unclaimed  {} wei", e.unclaimed);
    Ok(())
}
