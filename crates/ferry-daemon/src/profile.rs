//! The profile: a directory (mode 0700) holding the node's long-term identity and, later, its
//! database. Default location: `$XDG_DATA_HOME/ferry` (usually `~/.local/share/ferry`), or
//! `--profile DIR` / `FERRY_PROFILE`.
//!
//! `identity.toml` (mode 0600) holds the long-term X25519 secret key and the nospam:
//!
//! ```toml
//! format = 1
//! secret_key = "<64 hex>"
//! nospam = "<8 hex, as the Tox ID shows it>"
//! ```
//!
//! The DHT key pair is *not* stored: a fresh one is made at every start, as c-toxcore does.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_crypto::rng::{FerryRng, os_seed};
use ferry_crypto::{KeyPair, PublicKey, SecretKey, decode_hex_array};
use ferry_wire::toxid::ToxId;
use serde::{Deserialize, Serialize};

/// File name of the identity inside the profile directory.
pub const IDENTITY_FILE: &str = "identity.toml";

/// Errors of profile handling, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// No identity in the directory.
    #[error("no ferry profile at {0}; create one with `ferry init` (or pass --profile DIR)")]
    Missing(PathBuf),
    /// `init` without `--force` over an existing identity.
    #[error(
        "a ferry profile already exists at {dir} (Tox ID {tox_id}); pass --force to replace it (the old identity is lost)"
    )]
    Exists {
        /// The directory.
        dir: PathBuf,
        /// Its Tox ID.
        tox_id: String,
    },
    /// The identity file does not parse.
    #[error("the identity file {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The OS RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The long-term identity: the key pair in the Tox ID and the nospam.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Long-term X25519 key pair.
    pub long_term: KeyPair,
    /// Nospam, as `tox_self_get_nospam` reports it (the ID shows it big-endian).
    pub nospam: u32,
}

impl Identity {
    /// A new identity from OS randomness.
    ///
    /// # Errors
    /// [`ProfileError::Rng`].
    pub fn generate() -> Result<Self, ProfileError> {
        let mut rng = FerryRng::from_seed(os_seed().map_err(|e| ProfileError::Rng(e.to_string()))?);
        let long_term = KeyPair::generate(&mut rng);
        let nospam = u32::from_be_bytes(rng.bytes());
        Ok(Self { long_term, nospam })
    }

    /// The Tox ID (76 hex when printed).
    pub fn tox_id(&self) -> ToxId {
        ToxId::new(self.long_term.public, self.nospam)
    }

    /// The long-term public key.
    pub fn public_key(&self) -> PublicKey {
        self.long_term.public
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    format: u32,
    secret_key: String,
    nospam: String,
}

/// The default profile directory: `$XDG_DATA_HOME/ferry`, else `~/.local/share/ferry`, else
/// `./ferry-profile`.
pub fn default_dir() -> PathBuf {
    let from_env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = from_env("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return d.join("ferry");
    }
    match from_env("HOME") {
        Some(home) => home.join(".local/share/ferry"),
        None => PathBuf::from("ferry-profile"),
    }
}

/// Creates a profile at `dir` with a new identity; refuses to overwrite one unless `force`.
///
/// # Errors
/// [`ProfileError::Exists`], [`ProfileError::Io`], [`ProfileError::Rng`].
pub fn init(dir: &Path, force: bool) -> Result<Identity, ProfileError> {
    if !force {
        match load(dir) {
            Ok(existing) => {
                return Err(ProfileError::Exists {
                    dir: dir.to_path_buf(),
                    tox_id: existing.tox_id().to_string(),
                });
            }
            Err(ProfileError::Missing(_)) => {}
            Err(e @ ProfileError::Corrupt { .. }) => return Err(e),
            Err(e) => return Err(e),
        }
    }
    let identity = Identity::generate()?;
    save(dir, &identity)?;
    Ok(identity)
}

/// Writes `identity` into `dir` (created with mode 0700), atomically, with mode 0600.
///
/// # Errors
/// [`ProfileError::Io`].
pub fn save(dir: &Path, identity: &Identity) -> Result<(), ProfileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProfileError::Io { path, source }
    };
    create_private_dir(dir).map_err(io(dir))?;
    let body = IdentityFile {
        format: 1,
        secret_key: identity.long_term.secret.to_hex(),
        nospam: format!("{:08X}", identity.nospam),
    };
    let text = format!(
        "# ferry identity: the long-term secret key behind your Tox ID. Keep it secret.\n{}",
        toml::to_string(&body).map_err(|e| ProfileError::Io {
            path: dir.join(IDENTITY_FILE),
            source: std::io::Error::other(e.to_string()),
        })?
    );
    let final_path = dir.join(IDENTITY_FILE);
    let tmp = dir.join(format!(".{IDENTITY_FILE}.tmp"));
    {
        let mut f = open_private(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    Ok(())
}

/// Loads the identity of the profile at `dir`.
///
/// # Errors
/// [`ProfileError::Missing`], [`ProfileError::Corrupt`], [`ProfileError::Io`].
pub fn load(dir: &Path) -> Result<Identity, ProfileError> {
    let path = dir.join(IDENTITY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProfileError::Missing(dir.to_path_buf()));
        }
        Err(source) => return Err(ProfileError::Io { path, source }),
    };
    let corrupt = |reason: String| ProfileError::Corrupt {
        path: path.clone(),
        reason,
    };
    let file: IdentityFile = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.format != 1 {
        return Err(corrupt(format!("unknown format {}", file.format)));
    }
    let secret = decode_hex_array::<32>(&file.secret_key)
        .map_err(|e| corrupt(format!("secret_key: {e}")))?;
    let nospam =
        decode_hex_array::<4>(&file.nospam).map_err(|e| corrupt(format!("nospam: {e}")))?;
    Ok(Identity {
        long_term: KeyPair::from_secret(SecretKey::from_bytes(secret)),
        nospam: u32::from_be_bytes(nospam),
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        } else {
            let meta = fs::metadata(dir)?;
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

fn open_private(path: &Path) -> std::io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_load_force_and_permissions() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("p");
        assert!(matches!(load(&dir), Err(ProfileError::Missing(_))));
        let id = init(&dir, false).expect("init");
        let back = load(&dir).expect("load");
        assert_eq!(back.tox_id(), id.tox_id());
        assert!(matches!(
            init(&dir, false),
            Err(ProfileError::Exists { .. })
        ));
        let id2 = init(&dir, true).expect("force");
        assert_ne!(id2.public_key(), id.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(IDENTITY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(&dir).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn damaged_file_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(
            tmp.path().join(IDENTITY_FILE),
            "format = 1\nsecret_key = \"zz\"\nnospam = \"00000000\"\n",
        )
        .expect("write");
        let err = load(tmp.path()).expect_err("corrupt");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
