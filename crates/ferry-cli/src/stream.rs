//! `ferry stream publish NAME < data` and `ferry stream watch NAME|ID > data` (issue 10 item 5):
//! clients of `/v1/stream/…`.
//!
//! `publish` cuts stdin into segments of at most [`SEGMENT_BYTES`] bytes, each closed after
//! [`SEGMENT_TIME`] at the latest (a live source) or when full (a file), paced to `--rate`
//! bytes/s when given, pushes each to the daemon (which signs and sends it down the tree), and at
//! end of input pushes the end segment, lingers so viewers can repair, and closes the stream.
//! `watch` writes the verified bytes in order to stdout and a summary to stderr (JSON with
//! `--json`): start-up delay, stalls, segments, bytes, gaps.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use clap::Subcommand;
use ferry_api::{
    Client, StreamChunk, StreamInfo, StreamPublish, StreamPush, StreamQuery, StreamRead,
    StreamStatus, StreamWatch,
};

/// Largest segment: 256 KiB.
pub(crate) const SEGMENT_BYTES: usize = 256 << 10;
/// A segment is closed this long after its first byte: 1 s.
pub(crate) const SEGMENT_TIME: Duration = Duration::from_secs(1);

/// `ferry stream …`.
#[derive(Subcommand, Debug)]
pub(crate) enum StreamCommand {
    /// Publish stdin as a live stream named NAME (prints the stream id).
    Publish {
        /// Stream name.
        name: String,
        /// Pace the input to this many bytes/s (default: as fast as it comes).
        #[arg(long)]
        rate: Option<u64>,
        /// Wait until this many viewers joined before reading stdin.
        #[arg(long, default_value_t = 0)]
        wait_viewers: u64,
        /// Keep serving this many seconds after the end of input (repair for late viewers).
        #[arg(long, default_value_t = 10)]
        linger: u64,
    },
    /// Watch a stream by NAME or id; verified bytes go to stdout in order.
    Watch {
        /// Stream name or id (64 hex digits).
        stream: String,
        /// Summary as JSON on stderr.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds without data (0 = never).
        #[arg(long, default_value_t = 60)]
        idle_timeout: u64,
    },
    /// A stream's figures (JSON).
    Status {
        /// Stream id.
        id: String,
    },
}

/// Runs `ferry stream …`.
///
/// # Errors
/// The daemon's error, or I/O.
pub(crate) async fn run(client: &Client, cmd: StreamCommand) -> anyhow::Result<()> {
    match cmd {
        StreamCommand::Publish {
            name,
            rate,
            wait_viewers,
            linger,
        } => publish(client, name, rate, wait_viewers, linger).await,
        StreamCommand::Watch {
            stream,
            json,
            idle_timeout,
        } => watch(client, stream, json, idle_timeout).await,
        StreamCommand::Status { id } => {
            let s: StreamStatus = client
                .post("/v1/stream/status", &StreamQuery { id })
                .await?;
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
    }
}

async fn publish(
    client: &Client,
    name: String,
    rate: Option<u64>,
    wait_viewers: u64,
    linger: u64,
) -> anyhow::Result<()> {
    let info: StreamInfo = client
        .post("/v1/stream/publish", &StreamPublish { name })
        .await?;
    println!("{}", info.id);
    std::io::stdout().flush()?;
    eprintln!(
        "stream {} announced on {} DHT node(s)",
        info.name, info.announced
    );
    let id = info.id.clone();
    if wait_viewers > 0 {
        let start = Instant::now();
        loop {
            let s: StreamStatus = client
                .post("/v1/stream/status", &StreamQuery { id: id.clone() })
                .await?;
            if s.viewers >= wait_viewers {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(120),
                "only {} viewer(s) joined",
                s.viewers
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the tree attach before the first segment.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A reader thread cuts stdin into segments (blocking reads).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut seg = Vec::with_capacity(SEGMENT_BYTES);
        let mut opened: Option<Instant> = None;
        let mut buf = vec![0u8; 64 << 10];
        let paced_start = Instant::now();
        let mut total: u64 = 0;
        loop {
            let want = (SEGMENT_BYTES - seg.len()).min(buf.len());
            let n = match stdin.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            opened.get_or_insert_with(Instant::now);
            seg.extend_from_slice(&buf[..n]);
            total += n as u64;
            if let Some(r) = rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(total as f64 / r as f64);
                if let Some(wait) = due.checked_sub(paced_start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if seg.len() >= SEGMENT_BYTES || opened.is_some_and(|o| o.elapsed() >= SEGMENT_TIME) {
                if tx.blocking_send(std::mem::take(&mut seg)).is_err() {
                    return;
                }
                opened = None;
            }
        }
        if !seg.is_empty() {
            let _ = tx.blocking_send(seg);
        }
    });
    let mut segments = 0u64;
    let mut bytes = 0u64;
    while let Some(seg) = rx.recv().await {
        bytes += seg.len() as u64;
        segments += 1;
        let _: StreamStatus = client
            .post(
                "/v1/stream/push",
                &StreamPush {
                    id: id.clone(),
                    data_hex: hex::encode(&seg),
                    end: false,
                },
            )
            .await?;
    }
    let s: StreamStatus = client
        .post(
            "/v1/stream/push",
            &StreamPush {
                id: id.clone(),
                data_hex: String::new(),
                end: true,
            },
        )
        .await?;
    eprintln!(
        "published {segments} segment(s), {bytes} bytes; {} viewer(s), {} bytes sent",
        s.viewers, s.bytes_sent
    );
    tokio::time::sleep(Duration::from_secs(linger)).await;
    let s: StreamStatus = client
        .post("/v1/stream/status", &StreamQuery { id: id.clone() })
        .await?;
    eprintln!(
        "{}",
        serde_json::json!({ "id": id, "segments": segments, "bytes": bytes, "viewers": s.viewers, "bytes_sent": s.bytes_sent })
    );
    let _: ferry_api::Ok = client.post("/v1/stream/close", &StreamQuery { id }).await?;
    Ok(())
}

async fn watch(client: &Client, stream: String, json: bool, idle: u64) -> anyhow::Result<()> {
    let info: StreamInfo = client
        .post("/v1/stream/watch", &StreamWatch { stream })
        .await?;
    if !json {
        eprintln!("watching stream {} ({})", info.name, info.id);
    }
    let mut out = std::io::stdout().lock();
    let mut last_data = Instant::now();
    let status = loop {
        let c: StreamChunk = client
            .post(
                "/v1/stream/read",
                &StreamRead {
                    id: info.id.clone(),
                    wait_ms: 2000,
                },
            )
            .await?;
        if !c.data_hex.is_empty() {
            out.write_all(&hex::decode(&c.data_hex)?)?;
            last_data = Instant::now();
        }
        if c.ended {
            break c.status;
        }
        if idle > 0 && last_data.elapsed() > Duration::from_secs(idle) {
            out.flush()?;
            let _: ferry_api::Ok = client
                .post(
                    "/v1/stream/close",
                    &StreamQuery {
                        id: info.id.clone(),
                    },
                )
                .await?;
            anyhow::bail!(
                "no data for {idle} s: {}",
                serde_json::to_string(&c.status)?
            );
        }
    };
    out.flush()?;
    let _: ferry_api::Ok = client
        .post("/v1/stream/close", &StreamQuery { id: info.id })
        .await?;
    if json {
        eprintln!("{}", serde_json::to_string(&status)?);
    } else {
        eprintln!(
            "stream ended: {} segment(s), {} bytes; start-up {} ms, {} stall(s) ({} ms), {} gap(s)",
            status.segments,
            status.bytes,
            status.startup_ms.unwrap_or(0),
            status.stalls,
            status.stalled_ms,
            status.gaps
        );
    }
    Ok(())
}
