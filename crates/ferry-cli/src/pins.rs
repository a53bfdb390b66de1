//! `ferry publish PATH --pin`, `ferry pins [--json]` and `ferry unpin ID` (issue 10 item 2):
//! clients of `/v1/content/pin` and `/v1/content/pins` (replication in the daemon,
//! `ferry_daemon::replica`).

use std::path::PathBuf;

use anyhow::Context;
use ferry_api::{Client, ContentPin, ContentPublish, ContentPublished, PinStatus};

/// Runs `ferry publish PATH --pin [--json]`: publishes, then asks storers to pin it.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn publish_pinned(
    client: &Client,
    path: PathBuf,
    json: bool,
) -> anyhow::Result<()> {
    let path = std::path::absolute(&path).with_context(|| path.display().to_string())?;
    let req = ContentPublish {
        path: path.display().to_string(),
    };
    let r: ContentPublished = client.post("/v1/content/publish", &req).await?;
    let _: PinStatus = client
        .post(
            "/v1/content/pin",
            &ContentPin {
                id: r.id.clone(),
                pin: true,
            },
        )
        .await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "id": r.id, "name": r.name, "files": r.files, "bytes": r.bytes, "announced": r.announced, "pinned": true })
        );
    } else {
        println!("{}", r.id);
        eprintln!(
            "published {} ({} file(s), {} bytes); asking storers to pin it (see `ferry pins`)",
            r.name, r.files, r.bytes
        );
    }
    Ok(())
}

/// Runs `ferry pins [--json]`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn pins(client: &Client, json: bool) -> anyhow::Result<()> {
    let v: Vec<PinStatus> = client.get("/v1/content/pins").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.is_empty() {
        println!("no pinned content (publish with `ferry publish PATH --pin`)");
    } else {
        for p in &v {
            println!(
                "{}  {}{}  {} replica(s)",
                p.id,
                p.role,
                if p.fetched { "" } else { " (fetching)" },
                p.holders.len()
            );
            for h in &p.holders {
                println!("    {h}");
            }
        }
    }
    Ok(())
}

/// Runs `ferry unpin ID`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn unpin(client: &Client, id: String) -> anyhow::Result<()> {
    let _: PinStatus = client
        .post("/v1/content/pin", &ContentPin { id, pin: false })
        .await?;
    println!("unpinned");
    Ok(())
}
