//! `ferry channel create|join|post|read|members|approve|remove` (issue 10 item 3: channels over
//! the DHT value store; see `ferry_daemon::channel`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use ferry_api::{
    ChannelCreate, ChannelInfo, ChannelMemberRequest, ChannelMembers, ChannelMessage, ChannelPost,
    ChannelPostResult, ChannelRead, ChannelRef, Client,
};

/// `ferry channel …`.
#[derive(Subcommand, Debug)]
pub(crate) enum ChannelCommand {
    /// Create a channel; prints its id. Public channels are readable by anyone with the id and
    /// only their admins post; private ones are encrypted and members are approved by the
    /// founder.
    Create {
        /// Private channel.
        #[arg(long)]
        private: bool,
        /// Display name (≤ 48 bytes).
        #[arg(long, default_value = "")]
        name: String,
        /// JSON: {"id", "name", "private", "status", "member_key", "epoch"}.
        #[arg(long)]
        json: bool,
    },
    /// Join a channel by id (private: sends a join request to the founder, who approves it).
    Join {
        /// Channel id (64 hex digits).
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Post TEXT (or a small file, inline) to a channel.
    Post {
        /// Channel id.
        id: String,
        /// The text.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Post a small file instead (at most ~770 bytes inline; bigger files go through the
        /// content layer, `ferry publish`, and their id is posted).
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// Testing: publish even if this node may not post (members drop such posts).
        #[arg(long, hide = true)]
        unchecked: bool,
        /// JSON: {"post_id", "seq", "stored"}.
        #[arg(long)]
        json: bool,
    },
    /// Read a channel's posts (fetching what is new first), oldest first.
    Read {
        /// Channel id.
        id: String,
        /// Keep printing new posts.
        #[arg(long, short)]
        follow: bool,
        /// JSON lines: {"post_id", "author", "seq", "sent_unix", "text", "file_name",
        /// "file_hex"}.
        #[arg(long)]
        json: bool,
    },
    /// List admins, members and (founder) waiting join requests.
    Members {
        /// Channel id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Founder: approve a join request (member key, or the joiner's Tox public key).
    Approve {
        /// Channel id.
        id: String,
        /// Member key or Tox public key (64 hex digits).
        public_key: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Founder: remove a member; the channel key is rotated so it cannot read new posts.
    Remove {
        /// Channel id.
        id: String,
        /// Member key or Tox public key.
        public_key: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn print_info(i: &ChannelInfo, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(i);
    }
    println!("{}", i.id);
    eprintln!(
        "{} channel {:?}: {} (your member key {})",
        if i.private { "private" } else { "public" },
        i.name,
        i.status,
        i.member_key
    );
    Ok(())
}

fn print_members(m: &ChannelMembers, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(m);
    }
    println!(
        "{} ({}, epoch {}, you: {})",
        m.info.name,
        if m.info.private { "private" } else { "public" },
        m.info.epoch,
        m.info.status
    );
    for x in &m.members {
        println!("{:<8} {}  box {}", x.role, x.member_key, x.box_key);
    }
    for r in &m.removed {
        println!("removed  {r}");
    }
    Ok(())
}

fn print_message(m: &ChannelMessage, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(m);
    }
    let who = m.author.get(..8).unwrap_or(&m.author);
    match &m.file_name {
        Some(name) => println!(
            "[{}] {who}#{}: file {name:?} ({} bytes)",
            m.sent_unix,
            m.seq,
            m.file_hex.len() / 2
        ),
        None => println!("[{}] {who}#{}: {}", m.sent_unix, m.seq, m.text),
    }
    Ok(())
}

/// Runs `ferry channel …`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn run(client: &Client, cmd: ChannelCommand) -> anyhow::Result<()> {
    match cmd {
        ChannelCommand::Create {
            private,
            name,
            json,
        } => {
            let i: ChannelInfo = client
                .post("/v1/channels/create", &ChannelCreate { private, name })
                .await?;
            print_info(&i, json)?;
        }
        ChannelCommand::Join { id, json } => {
            let i: ChannelInfo = client.post("/v1/channels/join", &ChannelRef { id }).await?;
            print_info(&i, json)?;
        }
        ChannelCommand::Post {
            id,
            text,
            file,
            unchecked,
            json,
        } => {
            let mut req = ChannelPost {
                id,
                text: text.unwrap_or_default(),
                unchecked,
                ..ChannelPost::default()
            };
            if let Some(path) = file {
                let data =
                    std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                if data.len() > ferry_data::channel::MAX_BODY {
                    anyhow::bail!(
                        "{} is {} bytes: a channel post carries at most ~{} bytes inline; \
                         publish it with the content layer (`ferry publish`) and post its id",
                        path.display(),
                        data.len(),
                        ferry_data::channel::MAX_PRIVATE_CONTENT
                    );
                }
                req.file_name = Some(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                req.file_hex = hex::encode(data);
            }
            let r: ChannelPostResult = client.post("/v1/channels/post", &req).await?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}", r.post_id);
                eprintln!("post #{} stored on {} node(s)", r.seq, r.stored);
            }
        }
        ChannelCommand::Read { id, follow, json } => {
            let mut seen = HashSet::new();
            loop {
                let posts: Vec<ChannelMessage> = client
                    .post(
                        "/v1/channels/read",
                        &ChannelRead {
                            id: id.clone(),
                            sync: true,
                        },
                    )
                    .await?;
                for p in &posts {
                    if seen.insert(p.post_id.clone()) {
                        print_message(p, json)?;
                    }
                }
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        ChannelCommand::Members { id, json } => {
            let m: ChannelMembers = client
                .post("/v1/channels/members", &ChannelRef { id })
                .await?;
            print_members(&m, json)?;
        }
        ChannelCommand::Approve {
            id,
            public_key,
            json,
        } => {
            let m: ChannelMembers = client
                .post(
                    "/v1/channels/approve",
                    &ChannelMemberRequest {
                        id,
                        key: public_key,
                    },
                )
                .await?;
            print_members(&m, json)?;
        }
        ChannelCommand::Remove {
            id,
            public_key,
            json,
        } => {
            let m: ChannelMembers = client
                .post(
                    "/v1/channels/remove",
                    &ChannelMemberRequest {
                        id,
                        key: public_key,
                    },
                )
                .await?;
            print_members(&m, json)?;
        }
    }
    Ok(())
}
