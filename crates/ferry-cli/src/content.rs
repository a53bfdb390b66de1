//! `ferry publish PATH` and `ferry fetch ID [--to DIR]` (issue 10 item 1): clients of
//! `/v1/content/…`; `fetch` draws an indicatif progress bar (providers, rate, ETA) while the
//! daemon downloads from every provider at once. `ferry site …` (issue 10 item 4) binds a
//! username to a published directory and fetches it back by name.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use ferry_api::{
    Client, ContentFetch, ContentJob, ContentJobQuery, ContentPublish, ContentPublished,
    NameRequest, SiteInfo, SitePublish,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Runs `ferry publish PATH [--json]`.
///
/// # Errors
/// The daemon's error, or its absence.
pub(crate) async fn publish(client: &Client, path: PathBuf, json: bool) -> anyhow::Result<()> {
    let path = std::path::absolute(&path).with_context(|| path.display().to_string())?;
    let req = ContentPublish {
        path: path.display().to_string(),
    };
    let r: ContentPublished = client.post("/v1/content/publish", &req).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "id": r.id, "name": r.name, "files": r.files, "bytes": r.bytes, "announced": r.announced })
        );
    } else {
        println!("{}", r.id);
        eprintln!(
            "published {} ({} file(s), {} bytes); provider record stored on {} DHT node(s)",
            r.name, r.files, r.bytes, r.announced
        );
    }
    Ok(())
}

/// Runs `ferry fetch ID [--to DIR] [--json]`: starts the job and follows it.
///
/// # Errors
/// The daemon's error, or a failed fetch.
pub(crate) async fn fetch(
    client: &Client,
    id: String,
    to: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    fetch_with(client, id, to, json, None).await
}

/// [`fetch`], with the site it is a version of (added to the JSON summary as "site").
async fn fetch_with(
    client: &Client,
    id: String,
    to: Option<PathBuf>,
    json: bool,
    site: Option<SiteInfo>,
) -> anyhow::Result<()> {
    let to = std::path::absolute(to.unwrap_or_else(|| PathBuf::from(".")))?;
    let req = ContentFetch {
        id,
        to: to.display().to_string(),
    };
    let mut job: ContentJob = client.post("/v1/content/fetch", &req).await?;
    let pb = (!json).then(|| {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb
    });
    loop {
        if let Some(pb) = &pb {
            pb.set_length(job.total_bytes);
            pb.set_position(job.verified_bytes);
            pb.set_message(format!(
                "{} {} peers {}/{}",
                if job.name.is_empty() {
                    "…"
                } else {
                    &job.name
                },
                job.state,
                job.providers_live,
                job.providers_known
            ));
        }
        if matches!(job.state.as_str(), "done" | "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        job = client
            .post("/v1/content/job", &ContentJobQuery { job: job.job })
            .await?;
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if job.state == "failed" {
        anyhow::bail!(
            "fetch failed: {}",
            job.error.unwrap_or_else(|| "unknown error".into())
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "path": job.path,
                "bytes": job.total_bytes,
                "providers_used": job.providers_used,
                "providers_dropped": job.providers_dropped,
                "providers_known": job.providers_known,
                "seconds": job.seconds,
                "rate": job.rate,
                "site": site,
            })
        );
    } else {
        println!(
            "{}: {} bytes from {} provider(s) ({} dropped) in {:.1} s, {:.1} MiB/s",
            job.path,
            job.total_bytes,
            job.providers_used,
            job.providers_dropped,
            job.seconds,
            job.rate / f64::from(1u32 << 20)
        );
    }
    Ok(())
}

/// `ferry site …`.
#[derive(Subcommand, Debug)]
pub(crate) enum SiteCommand {
    /// Publish DIR as the latest version of the site under NAME (a username this node
    /// registered with `ferry name register`); browsers open it through a node's gateway at
    /// http://127.0.0.1:PORT/site/NAME/ (`ferry up --gateway PORT`).
    Publish {
        /// The site's directory (`index.html` is its front page).
        dir: PathBuf,
        /// The username to publish under.
        #[arg(long)]
        name: String,
        /// JSON: {"name", "id", "tox_id", "fingerprint", "published_unix"}.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the latest version of the site under NAME into DIR (its directory appears there
    /// under its published name).
    Get {
        /// The username (`@NAME` works too).
        name: String,
        /// Directory to write into (default: the current directory).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Only resolve: print the site's content id and owner, fetch nothing.
        #[arg(long)]
        resolve_only: bool,
        /// JSON: the fetch summary of `ferry fetch --json` plus "site" ({"name", "id",
        /// "tox_id", "fingerprint", "published_unix"}); with --resolve-only, the site alone.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `ferry site …`.
///
/// # Errors
/// The daemon's error, or a failed fetch.
pub(crate) async fn site(client: &Client, cmd: SiteCommand) -> anyhow::Result<()> {
    match cmd {
        SiteCommand::Publish { dir, name, json } => {
            let dir = std::path::absolute(&dir).with_context(|| dir.display().to_string())?;
            let req = SitePublish {
                name,
                path: dir.display().to_string(),
            };
            let s: SiteInfo = client.post("/v1/site/publish", &req).await?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("{}", s.id);
                eprintln!(
                    "site {:?} now serves {} (owner fingerprint {}); open it at \
                     http://127.0.0.1:PORT/site/{}/ on a node running `ferry up --gateway PORT`",
                    s.name,
                    dir.display(),
                    s.fingerprint,
                    s.name
                );
            }
        }
        SiteCommand::Get {
            name,
            to,
            resolve_only,
            json,
        } => {
            let s: SiteInfo = client
                .post("/v1/site/resolve", &NameRequest { name })
                .await?;
            if resolve_only {
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    println!(
                        "{} → {} (owner {} fingerprint {}, published at {})",
                        s.name, s.id, s.tox_id, s.fingerprint, s.published_unix
                    );
                }
                return Ok(());
            }
            if !json {
                eprintln!(
                    "site {:?}: version {} (owner fingerprint {})",
                    s.name, s.id, s.fingerprint
                );
            }
            fetch_with(client, s.id.clone(), to, json, Some(s)).await?;
        }
    }
    Ok(())
}
