//! `ferry file …`: send, list, accept, cancel, pause, resume, avatar. Clients of the daemon's
//! control API (`/v1/files/…`); `send` and `accept` show an indicatif progress bar with rate
//! and ETA while the transfer runs, when stderr is a terminal and `--json` is not given.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use ferry_api::{Client, FileAction, FileTransfer, SendFile, SetAvatar};
use indicatif::{ProgressBar, ProgressStyle};

/// `ferry file …`.
#[derive(Subcommand, Debug)]
pub(crate) enum FileCommand {
    /// Send a file to a friend (offered now, or when the friend comes online).
    Send {
        /// Friend: public key, key prefix or name.
        friend: String,
        /// The file.
        path: std::path::PathBuf,
        /// Wait until the friend has received it (default when stderr is a terminal).
        #[arg(long)]
        wait: bool,
        /// JSON output: the transfer record (does not wait).
        #[arg(long)]
        json: bool,
    },
    /// List file transfers.
    List {
        /// JSON array of {"id", "friend", "name", "size", "bytes_done", "rate", "state",
        /// "file_id", "direction", "hash", …}.
        #[arg(long)]
        json: bool,
    },
    /// Accept an offered file.
    Accept {
        /// Transfer id (`ferry file list`).
        id: u64,
        /// Directory to save into (default: the auto-accept directory, else
        /// `<profile>/downloads`).
        #[arg(long)]
        to: Option<std::path::PathBuf>,
        /// Wait until it is complete (default when stderr is a terminal).
        #[arg(long)]
        wait: bool,
        /// JSON output (does not wait).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a transfer.
    Cancel {
        /// Transfer id.
        id: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Pause a transfer.
    Pause {
        /// Transfer id.
        id: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Resume a transfer we paused.
    Resume {
        /// Transfer id.
        id: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set (or with "" remove) your avatar; friends get it when online.
    Avatar {
        /// Image file.
        path: String,
    },
}

fn abs(p: &std::path::Path) -> anyhow::Result<String> {
    let p = std::path::absolute(p).with_context(|| p.display().to_string())?;
    Ok(p.to_string_lossy().into_owned())
}

/// Runs `ferry file …`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn file(client: &Client, cmd: FileCommand) -> anyhow::Result<()> {
    match cmd {
        FileCommand::Send {
            friend,
            path,
            wait,
            json,
        } => {
            let req = SendFile {
                friend,
                path: abs(&path)?,
            };
            let t: FileTransfer = client.post("/v1/files/send", &req).await?;
            finish(client, t, wait, json).await
        }
        FileCommand::List { json } => {
            let list: Vec<FileTransfer> = client.get("/v1/files").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                eprintln!("no file transfers");
            }
            for t in list {
                println!(
                    "{:>4} {:3} {:10} {:9} {:>10} {:>10} {:>10}/s  {}{}",
                    t.id,
                    t.direction,
                    &t.friend[..8.min(t.friend.len())],
                    t.state,
                    human(t.size),
                    human(t.bytes_done),
                    human(t.rate),
                    t.name,
                    t.hash
                        .as_deref()
                        .filter(|_| t.state == "done")
                        .map(|h| format!("  blake3 {h}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        FileCommand::Accept { id, to, wait, json } => {
            let req = FileAction {
                id,
                to: to.as_deref().map(abs).transpose()?,
            };
            let t: FileTransfer = client.post("/v1/files/accept", &req).await?;
            finish(client, t, wait, json).await
        }
        FileCommand::Cancel { id, json } => action(client, "/v1/files/cancel", id, json).await,
        FileCommand::Pause { id, json } => action(client, "/v1/files/pause", id, json).await,
        FileCommand::Resume { id, json } => action(client, "/v1/files/resume", id, json).await,
        FileCommand::Avatar { path } => {
            let path = if path.is_empty() {
                path
            } else {
                abs(std::path::Path::new(&path))?
            };
            let _: ferry_api::Ok = client.post("/v1/files/avatar", &SetAvatar { path }).await?;
            Ok(())
        }
    }
}

async fn action(client: &Client, path: &str, id: u64, json: bool) -> anyhow::Result<()> {
    let t: FileTransfer = client
        .post(
            path,
            &FileAction {
                id,
                ..FileAction::default()
            },
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        println!("{} {} {}", t.id, t.state, t.name);
    }
    Ok(())
}

fn human(b: u64) -> String {
    if b == u64::MAX {
        return "?".into();
    }
    let mut v = b as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// Prints `t` (JSON, no wait), or follows it with a progress bar until it ends.
async fn finish(client: &Client, t: FileTransfer, wait: bool, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    if !wait && !tty {
        println!("{} {} {}", t.id, t.state, t.name);
        return Ok(());
    }
    let t = follow(client, t.id, tty).await?;
    match t.state.as_str() {
        "done" => {
            println!(
                "{} done {} ({} bytes){}",
                t.id,
                if t.direction == "in" {
                    &t.path
                } else {
                    &t.name
                },
                t.bytes_done,
                t.hash.map(|h| format!(" blake3 {h}")).unwrap_or_default()
            );
            Ok(())
        }
        s => anyhow::bail!(
            "transfer {} {s}{}",
            t.id,
            t.error.map(|e| format!(": {e}")).unwrap_or_default()
        ),
    }
}

/// Polls transfer `id` until it is done, cancelled or failed, drawing a progress bar when
/// `bar` (rate and ETA as indicatif computes them from the byte counts).
pub(crate) async fn follow(client: &Client, id: u64, bar: bool) -> anyhow::Result<FileTransfer> {
    let pb = if bar {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(pb)
    } else {
        None
    };
    loop {
        let list: Vec<FileTransfer> = client.get("/v1/files").await?;
        let t = list
            .into_iter()
            .find(|t| t.id == id)
            .with_context(|| format!("transfer {id} disappeared"))?;
        if let Some(pb) = &pb {
            if t.size != u64::MAX {
                pb.set_length(t.size);
            }
            pb.set_position(t.bytes_done);
            pb.set_message(format!("{} {}", t.name, t.state));
        }
        if matches!(t.state.as_str(), "done" | "cancelled" | "failed") {
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
