//! Friends and chat commands: `ferry friend …`, `ferry send`, `ferry messages`, `ferry set …`,
//! `ferry chat`. All are clients of the daemon's control API (issue 4 point 6).

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use ferry_api::{
    AddFriend, Client, Friend, FriendKey, FriendRequest, ListMessages, Message, SelfInfo,
    SelfUpdate, SendMessage,
};

/// `ferry friend …`.
#[derive(Subcommand, Debug)]
pub(crate) enum FriendCommand {
    /// Add a friend by Tox ID and send them a friend request.
    Add {
        /// Their Tox ID (76 hex digits), or the public key (64 hex digits) of a service node
        /// (`ferry up --relay-node`/`--exit-node`), whose Tox ID follows from its key, or
        /// `@NAME`, a registered username (`ferry name resolve`).
        tox_id: String,
        /// Request message (default: "Hi, this is ferry. Let's be friends!").
        message: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List friend requests waiting for an answer.
    Requests {
        /// JSON array of {"public_key", "message", "time_ms"}.
        #[arg(long)]
        json: bool,
    },
    /// Accept a friend request.
    Accept {
        /// The requester's public key (64 hex digits).
        public_key: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Reject (drop) a friend request. Tox sends no refusal; the requester is not told.
    Reject {
        /// The requester's public key.
        public_key: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List friends.
    List {
        /// JSON array of {"public_key", "name", "status_message", "connection"}.
        #[arg(long)]
        json: bool,
    },
    /// Remove a friend (history is kept).
    Remove {
        /// The friend's public key.
        public_key: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Send a custom packet (hex; first byte 160–191 lossless or 200–254 lossy).
    Packet {
        /// Friend: public key or name.
        friend: String,
        /// Packet bytes in hex.
        hex: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `ferry set …`.
#[derive(Subcommand, Debug)]
pub(crate) enum SetCommand {
    /// Set your name (≤ 128 bytes).
    Name {
        /// The name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set your status message (≤ 1007 bytes).
    StatusMessage {
        /// The text.
        text: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change the nospam part of your Tox ID (old IDs stop working for new requests).
    Nospam {
        /// 8 hex digits (default: random).
        hex: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Accept friend requests automatically (on/off).
    AutoAccept {
        /// `on` or `off`.
        value: OnOff,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Accept files from friends automatically into DIR ("" = ask).
    AutoAcceptFiles {
        /// Directory ("" turns it off).
        dir: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// A switch.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

const DEFAULT_REQUEST: &str = "Hi, this is ferry. Let's be friends!";

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn ok_json(json: bool, text: &str) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({"ok": true}))
    } else {
        eprintln!("{text}");
        Ok(())
    }
}

fn print_friend_line(f: &Friend) {
    let name = if f.name.is_empty() { "-" } else { &f.name };
    let pending = if f.request_pending {
        "  (request sent)"
    } else {
        ""
    };
    println!("{}  {:<5} {}{}", f.public_key, f.connection, name, pending);
    if let Some(r) = &f.relay {
        println!("{:>66}via relay {r}", "");
    }
    if !f.status_message.is_empty() {
        println!("{:>66}{}", "", f.status_message);
    }
}

/// Runs `ferry friend …`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn friend(client: &Client, cmd: FriendCommand) -> anyhow::Result<()> {
    match cmd {
        FriendCommand::Add {
            tox_id,
            message,
            json,
        } => {
            let mut tox_id = tox_id.trim().to_string();
            if tox_id.starts_with('@') {
                let info = crate::data::resolve(client, &tox_id).await?;
                eprintln!(
                    "@{} is {} (owner key fingerprint {})",
                    info.name, info.tox_id, info.fingerprint
                );
                tox_id = info.tox_id;
            }
            let req = AddFriend {
                tox_id,
                message: message.unwrap_or_else(|| DEFAULT_REQUEST.into()),
            };
            let f: Friend = client.post("/v1/friends/add", &req).await?;
            if json {
                print_json(&f)?;
            } else {
                println!("{}", f.public_key);
                eprintln!("friend request queued; it is resent until they come online");
            }
        }
        FriendCommand::Requests { json } => {
            let rs: Vec<FriendRequest> = client.get("/v1/friends/requests").await?;
            if json {
                print_json(&rs)?;
            } else if rs.is_empty() {
                println!("no friend requests");
            } else {
                for r in rs {
                    println!("{}  {}", r.public_key, r.message);
                }
            }
        }
        FriendCommand::Accept { public_key, json } => {
            let f: Friend = client
                .post("/v1/friends/accept", &FriendKey { public_key })
                .await?;
            if json {
                print_json(&f)?;
            } else {
                println!("{}", f.public_key);
            }
        }
        FriendCommand::Reject { public_key, json } => {
            let _: ferry_api::Ok = client
                .post("/v1/friends/reject", &FriendKey { public_key })
                .await?;
            ok_json(json, "request dropped")?;
        }
        FriendCommand::List { json } => {
            let fs: Vec<Friend> = client.get("/v1/friends").await?;
            if json {
                print_json(&fs)?;
            } else if fs.is_empty() {
                println!("no friends yet: `ferry friend add TOX_ID`");
            } else {
                for f in &fs {
                    print_friend_line(f);
                }
            }
        }
        FriendCommand::Remove { public_key, json } => {
            let _: ferry_api::Ok = client
                .post("/v1/friends/remove", &FriendKey { public_key })
                .await?;
            ok_json(json, "friend removed")?;
        }
        FriendCommand::Packet { friend, hex, json } => {
            let _: ferry_api::Ok = client
                .post(
                    "/v1/friends/packet",
                    &ferry_api::CustomPacket {
                        friend,
                        data_hex: hex,
                    },
                )
                .await?;
            ok_json(json, "sent")?;
        }
    }
    Ok(())
}

/// Runs `ferry set …`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn set(client: &Client, cmd: SetCommand) -> anyhow::Result<()> {
    let (update, json) = match cmd {
        SetCommand::Name { name, json } => (
            SelfUpdate {
                name: Some(name),
                ..SelfUpdate::default()
            },
            json,
        ),
        SetCommand::StatusMessage { text, json } => (
            SelfUpdate {
                status_message: Some(text),
                ..SelfUpdate::default()
            },
            json,
        ),
        SetCommand::Nospam { hex, json } => (
            SelfUpdate {
                nospam: Some(hex.unwrap_or_else(|| "random".into())),
                ..SelfUpdate::default()
            },
            json,
        ),
        SetCommand::AutoAcceptFiles { dir, json } => (
            SelfUpdate {
                auto_accept_files: Some(if dir.is_empty() {
                    dir
                } else {
                    std::path::absolute(&dir)?.to_string_lossy().into_owned()
                }),
                ..SelfUpdate::default()
            },
            json,
        ),
        SetCommand::AutoAccept { value, json } => (
            SelfUpdate {
                auto_accept: Some(matches!(value, OnOff::On)),
                ..SelfUpdate::default()
            },
            json,
        ),
    };
    let me: SelfInfo = client.post("/v1/self", &update).await?;
    if json {
        print_json(&me)?;
    } else {
        println!("Tox ID          {}", me.tox_id);
        println!("name            {}", me.name);
        println!("status message  {}", me.status_message);
        println!(
            "auto-accept     {}",
            if me.auto_accept { "on" } else { "off" }
        );
        if let Some(d) = &me.auto_accept_files {
            println!("accept files    {d}");
        }
    }
    Ok(())
}

/// Runs `ferry send`.
///
/// # Errors
/// The daemon's error (unknown friend, empty text…), or its absence.
pub(crate) async fn send(
    client: &Client,
    friend: String,
    text: String,
    action: bool,
    json: bool,
) -> anyhow::Result<()> {
    let req = SendMessage {
        friend,
        text,
        kind: if action { "action" } else { "normal" }.into(),
    };
    let m: Message = client.post("/v1/messages/send", &req).await?;
    if json {
        print_json(&m)?;
    } else if m.delivered {
        eprintln!("delivered");
    } else {
        eprintln!("queued (sent when the friend is online; see `ferry messages`)");
    }
    Ok(())
}

fn human_line(m: &Message, names: &std::collections::HashMap<String, String>) -> String {
    let who = names
        .get(&m.friend)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| m.friend[..8.min(m.friend.len())].to_string());
    let secs = m.time_ms / 1000;
    let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let arrow = if m.direction == "in" { "<" } else { ">" };
    let tick = if m.mailed {
        " (in their mailbox: they are offline)"
    } else if m.direction == "out" && !m.delivered {
        " (not yet delivered)"
    } else {
        ""
    };
    if m.kind == "action" {
        format!("{h:02}:{mi:02}:{s:02} {arrow} * {who} {}{tick}", m.text)
    } else {
        format!("{h:02}:{mi:02}:{s:02} {arrow} {who}: {}{tick}", m.text)
    }
}

async fn names(client: &Client) -> std::collections::HashMap<String, String> {
    client
        .get::<Vec<Friend>>("/v1/friends")
        .await
        .map(|fs| fs.into_iter().map(|f| (f.public_key, f.name)).collect())
        .unwrap_or_default()
}

/// Runs `ferry messages [FRIEND] [--follow]`: history, then (with `follow`) new entries as
/// they arrive, until Ctrl-C. JSON output is one object per line.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn messages(
    client: &Client,
    friend: Option<String>,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut after = 0;
    let names = if json {
        Default::default()
    } else {
        names(client).await
    };
    let mut first = true;
    loop {
        let req = ListMessages {
            friend: friend.clone(),
            after,
            limit: Some(1000),
            wait_ms: if follow && !first { 25_000 } else { 0 },
        };
        first = false;
        let batch: Vec<Message> = client.post("/v1/messages/list", &req).await?;
        for m in &batch {
            after = after.max(m.seq);
            if json {
                println!("{}", serde_json::to_string(m)?);
            } else {
                println!("{}", human_line(m, &names));
            }
        }
        if !follow && batch.len() < 1000 {
            break;
        }
    }
    Ok(())
}

/// Runs `ferry chat FRIEND`: a line-based chat. Prints the recent history and every new message;
/// each line typed is sent (`/me TEXT` sends an action, `/quit` or end of input leaves).
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn chat(
    client: &Client,
    friend: String,
    profile_dir: &Path,
) -> anyhow::Result<()> {
    let names = names(client).await;
    let history: Vec<Message> = client
        .post(
            "/v1/messages/list",
            &ListMessages {
                friend: Some(friend.clone()),
                ..ListMessages::default()
            },
        )
        .await
        .context("unknown friend?")?;
    let skip = history.len().saturating_sub(20);
    let mut after = 0;
    for m in &history {
        after = after.max(m.seq);
    }
    for m in &history[skip..] {
        println!("{}", human_line(m, &names));
    }
    eprintln!("chatting; type a line to send it, /me TEXT for an action, /quit to leave");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let follower = {
        let client = Client::new(ferry_api::socket_path(profile_dir));
        let friend = friend.clone();
        tokio::spawn(async move {
            loop {
                let req = ListMessages {
                    friend: Some(friend.clone()),
                    after,
                    limit: Some(1000),
                    wait_ms: 25_000,
                };
                match client
                    .post::<_, Vec<Message>>("/v1/messages/list", &req)
                    .await
                {
                    Ok(batch) => {
                        for m in batch {
                            after = after.max(m.seq);
                            if m.direction == "in" {
                                println!("{}", human_line(&m, &names));
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        break;
                    }
                }
            }
        })
    };
    while let Some(line) = rx.recv().await {
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" {
            break;
        }
        let (text, kind) = match line.strip_prefix("/me ") {
            Some(t) => (t.to_string(), "action"),
            None => (line, "normal"),
        };
        let req = SendMessage {
            friend: friend.clone(),
            text,
            kind: kind.into(),
        };
        match client.post::<_, Message>("/v1/messages/send", &req).await {
            Ok(m) if !m.delivered => eprintln!("(queued until {} is online)", &m.friend[..8]),
            Ok(_) => {}
            Err(e) => eprintln!("error: {e}"),
        }
    }
    follower.abort();
    Ok(())
}
