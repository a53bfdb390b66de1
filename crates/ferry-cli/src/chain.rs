//! `ferry chain serve|fund`: the embedded settlement chain as a shared JSON-RPC endpoint
//! (payments.md §4.5; server in `ferry_pay::rpc_server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use ferry_pay::rpc_server::{ChainServer, DEFAULT_LISTEN};
use ferry_pay::{Address, B256, EmbeddedConfig, EmbeddedEvm, JsonRpcEvm, PaymentBackend, U256};

/// `ferry chain ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum ChainCommand {
    /// Serve the embedded EVM chain (UniChannels deployed at genesis) as an Ethereum JSON-RPC
    /// endpoint over HTTP, so separate processes share one ledger. Dev use: it offers
    /// `ferry_fund`, `evm_increaseTime` and no authentication.
    Serve {
        /// IP:PORT to listen on.
        #[arg(long, default_value = DEFAULT_LISTEN, value_name = "IP:PORT")]
        listen: SocketAddr,
        /// Ledger snapshot file: loaded if it exists (its chain id wins), saved after every
        /// change. Without it the chain lives in memory.
        #[arg(long, value_name = "FILE")]
        ledger: Option<PathBuf>,
        /// EIP-155 chain id of a new chain (default 0x66657272 = 1717924466).
        #[arg(long, value_name = "N")]
        chain_id: Option<u64>,
        /// Print {"chain_id", "hub", "url", "ledger"} as one JSON line when ready.
        #[arg(long)]
        json: bool,
    },
    /// Add AMOUNT wei to ADDRESS on a dev chain (`ferry chain serve`: `ferry_fund`; Hardhat or
    /// anvil: set balance).
    Fund {
        /// 0x-prefixed 20-byte address.
        address: Address,
        /// Amount in wei, a decimal string (1 ETH = 1000000000000000000).
        amount: String,
        /// JSON-RPC endpoint.
        #[arg(long, env = "FERRY_RPC_URL", default_value = "http://127.0.0.1:8545")]
        rpc_url: String,
        /// Print {"address", "funded", "balance"} (wei as decimal strings).
        #[arg(long)]
        json: bool,
    },
    /// Balance of ADDRESS on the chain, wei.
    Balance {
        /// 0x-prefixed 20-byte address.
        address: Address,
        /// JSON-RPC endpoint.
        #[arg(long, env = "FERRY_RPC_URL", default_value = "http://127.0.0.1:8545")]
        rpc_url: String,
        /// Print {"address", "balance"} (wei as a decimal string).
        #[arg(long)]
        json: bool,
    },
    /// State of payment channel ID in the endpoint's UniChannels contract (`ferry_hub`, or
    /// `--hub`).
    Channel {
        /// 0x-prefixed 32-byte channel id (as `ferry wallet` shows it).
        id: B256,
        /// JSON-RPC endpoint.
        #[arg(long, env = "FERRY_RPC_URL", default_value = "http://127.0.0.1:8545")]
        rpc_url: String,
        /// UniChannels address (default: ask the endpoint with `ferry_hub`).
        #[arg(long, value_name = "0xADDRESS")]
        hub: Option<Address>,
        /// Print {"channel_id", "sender", "receiver", "deposit", "claimed", "expiry", "closed"}
        /// (wei as decimal strings; null when there is no such channel).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(command: ChainCommand) -> anyhow::Result<()> {
    match command {
        ChainCommand::Serve {
            listen,
            ledger,
            chain_id,
            json,
        } => {
            let mut config = EmbeddedConfig::default();
            if let Some(id) = chain_id {
                config.chain_id = id;
            }
            let evm = match &ledger {
                Some(path) => EmbeddedEvm::open_file(path, config)
                    .with_context(|| format!("ledger {}", path.display()))?,
                None => EmbeddedEvm::new(config)?,
            };
            if let Some(id) = chain_id {
                anyhow::ensure!(
                    evm.config().chain_id == id,
                    "the ledger file has chain id {}, not {id}",
                    evm.config().chain_id
                );
            }
            let server = ChainServer::bind(listen, evm)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "chain_id": server.chain_id(),
                        "hub": server.hub(),
                        "url": server.url(),
                        "ledger": ledger,
                    })
                );
            } else {
                println!("chain id {}", server.chain_id());
                println!("hub (UniChannels) {}", server.hub());
                println!("JSON-RPC on {}", server.url());
                if let Some(p) = &ledger {
                    println!("ledger {}", p.display());
                }
            }
            server
                .serve(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
        ChainCommand::Fund {
            address,
            amount,
            rpc_url,
            json,
        } => {
            let wei = U256::from_str_radix(amount.trim(), 10)
                .map_err(|_| anyhow::anyhow!("AMOUNT must be a decimal number of wei"))?;
            let chain = JsonRpcEvm::connect(&rpc_url, None, None, None)
                .await
                .with_context(|| format!("connect to {rpc_url}"))?;
            chain.dev_fund(address, wei).await?;
            let balance = chain.balance(address).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "address": address,
                        "funded": wei.to_string(),
                        "balance": balance.to_string(),
                    })
                );
            } else {
                println!("{address}: +{wei} wei, balance {balance} wei");
            }
        }
        ChainCommand::Balance {
            address,
            rpc_url,
            json,
        } => {
            let chain = JsonRpcEvm::connect(&rpc_url, None, None, None)
                .await
                .with_context(|| format!("connect to {rpc_url}"))?;
            let balance = chain.balance(address).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"address": address, "balance": balance.to_string()})
                );
            } else {
                println!("{balance}");
            }
        }
        ChainCommand::Channel {
            id,
            rpc_url,
            hub,
            json,
        } => {
            let chain = JsonRpcEvm::connect(&rpc_url, None, hub, None)
                .await
                .with_context(|| format!("connect to {rpc_url}"))?;
            let st = chain.channel(id).await?;
            let v = st.map(|c| {
                serde_json::json!({
                    "channel_id": id,
                    "sender": c.sender,
                    "receiver": c.receiver,
                    "deposit": c.deposit.to_string(),
                    "claimed": c.claimed.to_string(),
                    "expiry": c.expiry,
                    "closed": c.closed,
                })
            });
            match (json, v) {
                (true, v) => println!("{}", v.unwrap_or(serde_json::Value::Null)),
                (false, Some(v)) => println!("{v:#}"),
                (false, None) => anyhow::bail!("no channel {id}"),
            }
        }
    }
    Ok(())
}
