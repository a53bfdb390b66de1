//! `ferry store status`, `ferry dht put|get`, `ferry name register|resolve` (issue 9: the DHT
//! value store, usernames).

use clap::Subcommand;
use ferry_api::{
    Client, DhtGet, DhtGetResult, DhtPut, DhtPutResult, NameInfo, NameRequest, StoreStatus,
};

/// `ferry store …`.
#[derive(Subcommand, Debug)]
pub(crate) enum StoreCommand {
    /// What this node holds for others in the DHT value store, against its quota
    /// (`[store] quota_bytes` in config.toml, default 8 MiB).
    Status {
        /// JSON: {"items", "bytes", "quota_bytes", "max_items", "capable_nodes",
        /// "puts_accepted", "puts_refused", "evicted"}.
        #[arg(long)]
        json: bool,
    },
}

/// `ferry name …`.
#[derive(Subcommand, Debug)]
pub(crate) enum NameCommand {
    /// Register NAME for this node's Tox ID (first claim wins; costs a proof of work of a few
    /// seconds; renewed while the daemon runs).
    Register {
        /// a-z 0-9 . _ -, 1–63 bytes.
        name: String,
        /// JSON: {"name", "tox_id", "fingerprint", "expires_unix"}.
        #[arg(long)]
        json: bool,
    },
    /// Resolve NAME to its owner's Tox ID.
    Resolve {
        /// The name (a leading @ is ignored).
        name: String,
        /// JSON: {"name", "tox_id", "fingerprint", "expires_unix"}.
        #[arg(long)]
        json: bool,
    },
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Runs `ferry store …`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn store(client: &Client, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Status { json } => {
            let s: StoreStatus = client.get("/v1/store/status").await?;
            if json {
                print_json(&s)?;
            } else {
                println!("items held      {} (max {})", s.items, s.max_items);
                println!("bytes held      {} of {} quota", s.bytes, s.quota_bytes);
                println!("capable peers   {}", s.capable_nodes);
                println!(
                    "puts            {} accepted, {} refused, {} evicted",
                    s.puts_accepted, s.puts_refused, s.evicted
                );
            }
        }
    }
    Ok(())
}

/// `ferry dht put VALUE [--salt S] [--seq N]`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn dht_put(
    client: &Client,
    value: String,
    salt: Option<String>,
    seq: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let r: DhtPutResult = client
        .post("/v1/dht/put", &DhtPut { value, salt, seq })
        .await?;
    if json {
        print_json(&r)?;
    } else {
        println!("{}", r.target);
        eprintln!("stored on {} node(s)", r.stored);
    }
    Ok(())
}

/// `ferry dht get TARGET`.
///
/// # Errors
/// The daemon's error, not found, or the daemon's absence.
pub(crate) async fn dht_get(client: &Client, target: String, json: bool) -> anyhow::Result<()> {
    let r: DhtGetResult = client.post("/v1/dht/get", &DhtGet { target }).await?;
    if json {
        print_json(&r)?;
    } else if r.found {
        println!("{}", r.value);
    } else {
        anyhow::bail!("not found");
    }
    Ok(())
}

/// Resolves `@name` through the daemon.
///
/// # Errors
/// The daemon's error (e.g. not registered).
pub(crate) async fn resolve(client: &Client, name: &str) -> anyhow::Result<NameInfo> {
    Ok(client
        .post(
            "/v1/names/resolve",
            &NameRequest {
                name: name.to_string(),
            },
        )
        .await?)
}

/// Runs `ferry name …`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn name(client: &Client, cmd: NameCommand) -> anyhow::Result<()> {
    let (info, json) = match cmd {
        NameCommand::Register { name, json } => {
            let i: NameInfo = client
                .post("/v1/names/register", &NameRequest { name })
                .await?;
            (i, json)
        }
        NameCommand::Resolve { name, json } => (resolve(client, &name).await?, json),
    };
    if json {
        print_json(&info)?;
    } else {
        println!("{}", info.tox_id);
        eprintln!("@{}  owner key fingerprint {}", info.name, info.fingerprint);
    }
    Ok(())
}
