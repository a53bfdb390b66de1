//! `ferry publish PATH` and `ferry fetch ID [--to DIR]` (issue 10 item 1): clients of
//! `/v1/content/…`; `fetch` draws an indicatif progress bar (providers, rate, ETA) while the
//! daemon downloads from every provider at once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_api::{
    Client, ContentFetch, ContentJob, ContentJobQuery, ContentPublish, ContentPublished,
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
