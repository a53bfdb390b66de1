//! `ferry import FILE.tox` / `ferry export FILE.tox`: move a profile between ferry and other Tox
//! clients (qTox, uTox, toxic) through c-toxcore's save format, plain or encrypted with
//! toxencryptsave's passphrase scheme (issue 4 point 5; format in `ferry-toxsave`).
//!
//! What moves: the long-term key and nospam (so the Tox ID stays), our name and status message,
//! and the friend list (confirmed friends, and friends we sent a request to, with its message
//! and nospam so the request keeps being sent). Both commands need the daemon stopped (the
//! profile database is held open by a running daemon).

use std::path::Path;

use anyhow::{Context, bail};
use ferry_crypto::KeyPair;
use ferry_crypto::rng::{FerryRng, os_seed};
use ferry_store::{FriendRecord, Settings, Store};
use ferry_toxsave::{FriendStatus, SavedFriend, ToxSave};
use ferry_wire::toxid::ToxId;

use crate::chat::now_ms;
use crate::profile::{self, Identity};

/// What an import brought in.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    /// The Tox ID (unchanged from the other client).
    pub tox_id: String,
    /// Our name from the save.
    pub name: String,
    /// Friends imported.
    pub friends: usize,
    /// Whether the file was encrypted.
    pub encrypted: bool,
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    /// The Tox ID in the file.
    pub tox_id: String,
    /// Friends written.
    pub friends: usize,
    /// Whether the file is encrypted.
    pub encrypted: bool,
    /// Bytes written.
    pub bytes: usize,
}

fn open_store(profile_dir: &Path) -> anyhow::Result<Store> {
    Store::open(&profile_dir.join("ferry.redb")).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the profile database ({e}); if `ferry up` is running on this profile, stop it first with `ferry stop`"
        )
    })
}

/// Whether `data` needs a passphrase.
pub fn is_encrypted(data: &[u8]) -> bool {
    ferry_toxsave::is_encrypted(data)
}

/// Imports `data` (a c-toxcore save) into the profile at `profile_dir`.
///
/// # Errors
/// Not a Tox save, wrong passphrase, an existing profile with another key without `force`, a
/// running daemon, I/O.
pub fn import(
    profile_dir: &Path,
    data: &[u8],
    passphrase: Option<&[u8]>,
    force: bool,
) -> anyhow::Result<ImportReport> {
    let encrypted = is_encrypted(data);
    let save = ToxSave::load(data, passphrase).context("reading the Tox save")?;
    let identity = Identity {
        long_term: KeyPair::from_secret(save.secret_key.clone()),
        nospam: u32::from_be_bytes(save.nospam),
    };
    if let Ok(existing) = profile::load(profile_dir)
        && existing.public_key() != identity.public_key()
        && !force
    {
        bail!(
            "{} already holds another identity ({}); pass --force to replace it (that identity is lost)",
            profile_dir.display(),
            existing.tox_id()
        );
    }
    std::fs::create_dir_all(profile_dir)
        .with_context(|| format!("creating {}", profile_dir.display()))?;
    let store = open_store(profile_dir)?;
    profile::save(profile_dir, &identity)?;
    let mut settings: Settings = store.settings()?;
    settings.name = String::from_utf8_lossy(&save.name).into_owned();
    settings.status_message = String::from_utf8_lossy(&save.status_message).into_owned();
    store.set_settings(&settings)?;
    for f in &save.friends {
        let request = if f.status.is_confirmed() {
            None
        } else {
            Some((
                u32::from_be_bytes(f.nospam),
                String::from_utf8_lossy(&f.request_message).into_owned(),
            ))
        };
        store.put_friend(&FriendRecord {
            public_key: f.real_pk.to_hex(),
            name: String::from_utf8_lossy(&f.name).into_owned(),
            status_message: String::from_utf8_lossy(&f.status_message).into_owned(),
            request,
            added_ms: now_ms(),
            last_seen_ms: f.last_seen.saturating_mul(1000),
        })?;
    }
    Ok(ImportReport {
        tox_id: identity.tox_id().to_string(),
        name: settings.name,
        friends: save.friends.len(),
        encrypted,
    })
}

/// Builds a c-toxcore save of the profile at `profile_dir`, encrypted when `passphrase` is given.
///
/// # Errors
/// No profile, a running daemon, I/O.
pub fn export(
    profile_dir: &Path,
    passphrase: Option<&[u8]>,
) -> anyhow::Result<(Vec<u8>, ExportReport)> {
    let identity = profile::load(profile_dir)?;
    let store = open_store(profile_dir)?;
    let settings = store.settings()?;
    let mut save = ToxSave::new(
        identity.long_term.secret.clone(),
        identity.nospam.to_be_bytes(),
    );
    save.name = settings.name.into_bytes();
    save.status_message = settings.status_message.into_bytes();
    for f in store.friends()? {
        let Ok(pk) = ferry_crypto::PublicKey::from_hex(&f.public_key) else {
            continue;
        };
        let mut saved = match &f.request {
            Some((nospam, msg)) => SavedFriend::requested(&ToxId::new(pk, *nospam), msg.as_bytes()),
            None => SavedFriend::confirmed(pk),
        };
        if saved.status == FriendStatus::Confirmed {
            saved.name = f.name.into_bytes();
            saved.status_message = f.status_message.into_bytes();
            saved.last_seen = f.last_seen_ms / 1000;
        }
        save.friends.push(saved);
    }
    let friends = save.friends.len();
    let bytes = match passphrase {
        Some(p) => {
            let seed = os_seed().map_err(|e| anyhow::anyhow!("OS RNG: {e}"))?;
            save.encode_encrypted(p, &mut FerryRng::from_seed(seed))?
        }
        None => save.encode(),
    };
    let report = ExportReport {
        tox_id: identity.tox_id().to_string(),
        friends,
        encrypted: passphrase.is_some(),
        bytes: bytes.len(),
    };
    Ok((bytes, report))
}
