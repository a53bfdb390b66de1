//! The manifest blob (`data-layer.md` §3.4, iroh HashSeq-like): what a content id names.
//!
//! Layout (integers big-endian):
//!
//! | field | size | meaning |
//! |---|---|---|
//! | magic | 4 | `"FCM1"` |
//! | version | 1 | [`MANIFEST_VERSION`] = 1 |
//! | kind | 1 | 0 = file, 1 = directory |
//! | name_len | 2 | ≤ [`MAX_NAME`] |
//! | name | name_len | UTF-8 published name (one path component) |
//! | total_len | 8 | sum of the entries' lengths, bytes |
//! | count | 4 | entries, ≤ [`MAX_ENTRIES`] |
//! | entries | … | `[path_len u16][path][blob id 32][len u64]` each |
//!
//! A file manifest has exactly one entry with the empty path. A directory manifest's paths are
//! relative, `/`-separated, with no empty, `.` or `..` components, unique, ≤ [`MAX_PATH`]
//! bytes. The content id is BLAKE3 of the encoded manifest.

use ferry_wire::{Reader, WireError};

use crate::ContentId;

/// Manifest magic, 4 bytes.
pub const MAGIC: &[u8; 4] = b"FCM1";
/// Manifest format version: 1.
pub const MANIFEST_VERSION: u8 = 1;
/// Longest published name, bytes: 255.
pub const MAX_NAME: usize = 255;
/// Longest entry path, bytes: 4096.
pub const MAX_PATH: usize = 4096;
/// Most entries in one manifest: 65536.
pub const MAX_ENTRIES: usize = 65_536;
/// Largest manifest blob accepted, bytes: 8 MiB.
pub const MAX_MANIFEST_SIZE: u64 = 8 << 20;

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A single file (one entry, empty path).
    File,
    /// A directory tree (files only; empty directories are not carried).
    Directory,
}

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative `/`-separated path (empty for a single file).
    pub path: String,
    /// The file's blob id.
    pub blob: ContentId,
    /// The file's length, bytes.
    pub len: u64,
}

/// A decoded, validated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// File or directory.
    pub kind: Kind,
    /// The published name (file or directory name; one path component).
    pub name: String,
    /// Entries in publish order.
    pub entries: Vec<Entry>,
}

/// Whether `name` is one safe path component.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

/// Whether `path` is a safe relative path (components as [`valid_name`]).
pub fn valid_path(path: &str) -> bool {
    path.len() <= MAX_PATH && path.split('/').all(valid_name)
}

impl Manifest {
    /// Sum of the entries' lengths, bytes.
    pub fn total_len(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }

    /// Encodes; the caller built it from valid parts (see [`Manifest::validate`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.name.len() + self.entries.len() * 64);
        out.extend_from_slice(MAGIC);
        out.push(MANIFEST_VERSION);
        out.push(match self.kind {
            Kind::File => 0,
            Kind::Directory => 1,
        });
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.total_len().to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.path.len() as u16).to_be_bytes());
            out.extend_from_slice(e.path.as_bytes());
            out.extend_from_slice(&e.blob.0);
            out.extend_from_slice(&e.len.to_be_bytes());
        }
        out
    }

    /// The content id: BLAKE3 of [`Manifest::encode`].
    pub fn id(&self) -> ContentId {
        ContentId::of(&self.encode())
    }

    /// Checks the name, paths, counts and the total length (no overflow).
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] naming the field.
    pub fn validate(&self) -> Result<(), WireError> {
        let bad = |what| WireError::InvalidValue { what, value: 0 };
        if !valid_name(&self.name) {
            return Err(bad("manifest name"));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(bad("manifest entry count"));
        }
        match self.kind {
            Kind::File => {
                if self.entries.len() != 1 || !self.entries[0].path.is_empty() {
                    return Err(bad("file manifest entries"));
                }
            }
            Kind::Directory => {
                let mut seen = std::collections::HashSet::new();
                for e in &self.entries {
                    if !valid_path(&e.path) || !seen.insert(e.path.as_str()) {
                        return Err(bad("manifest path"));
                    }
                }
            }
        }
        self.entries
            .iter()
            .try_fold(0u64, |a, e| a.checked_add(e.len))
            .ok_or(bad("manifest total length"))?;
        Ok(())
    }

    /// Decodes and validates (never panics on any input).
    ///
    /// # Errors
    /// [`WireError`] on truncation, trailing bytes, a bad magic/version/kind, invalid UTF-8 or
    /// paths, or a total length that does not match the entries.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(WireError::BadLength {
                what: "manifest",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        if r.array::<4>("manifest magic")? != *MAGIC {
            return Err(WireError::InvalidValue {
                what: "manifest magic",
                value: 0,
            });
        }
        let v = r.u8("manifest version")?;
        if v != MANIFEST_VERSION {
            return Err(WireError::InvalidValue {
                what: "manifest version",
                value: v.into(),
            });
        }
        let kind = match r.u8("manifest kind")? {
            0 => Kind::File,
            1 => Kind::Directory,
            k => {
                return Err(WireError::InvalidValue {
                    what: "manifest kind",
                    value: k.into(),
                });
            }
        };
        let name = string(&mut r, "manifest name")?;
        let total = u64::from_be_bytes(r.array::<8>("manifest total_len")?);
        let count = r.u32_be("manifest count")? as usize;
        if count > MAX_ENTRIES {
            return Err(WireError::InvalidValue {
                what: "manifest entry count",
                value: count as u64,
            });
        }
        // Each entry takes at least 42 bytes: cap the allocation by what is there.
        let mut entries = Vec::with_capacity(count.min(r.remaining() / 42));
        for _ in 0..count {
            let path = string(&mut r, "manifest path")?;
            let blob = ContentId(r.array::<32>("manifest blob id")?);
            let len = u64::from_be_bytes(r.array::<8>("manifest entry len")?);
            entries.push(Entry { path, blob, len });
        }
        r.finish()?;
        let m = Self {
            kind,
            name,
            entries,
        };
        m.validate()?;
        if m.total_len() != total {
            return Err(WireError::InvalidValue {
                what: "manifest total_len",
                value: total,
            });
        }
        Ok(m)
    }
}

fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, WireError> {
    let len = r.u16_be(what)? as usize;
    let b = r.take(len, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError::InvalidValue { what, value: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        (
            "[a-z]{1,8}(/[a-z0-9._]{1,8}){0,3}",
            any::<[u8; 32]>(),
            0u64..1 << 40,
        )
            .prop_map(|(path, b, len)| Entry {
                path,
                blob: ContentId(b),
                len,
            })
    }

    proptest! {
        #[test]
        fn directory_round_trip(name in "[a-zA-Z0-9 _.-]{1,40}", entries in proptest::collection::vec(entry(), 0..20)) {
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<Entry> = entries.into_iter().filter(|e| seen.insert(e.path.clone())).collect();
            let m = Manifest { kind: Kind::Directory, name, entries };
            prop_assume!(m.validate().is_ok());
            let bytes = m.encode();
            prop_assert_eq!(Manifest::decode(&bytes), Ok(m));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Manifest::decode(&bytes);
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&bytes);
            let _ = Manifest::decode(&b);
        }
    }

    #[test]
    fn file_and_rejections() {
        let m = Manifest {
            kind: Kind::File,
            name: "a.bin".into(),
            entries: vec![Entry {
                path: String::new(),
                blob: ContentId([7; 32]),
                len: 5,
            }],
        };
        let b = m.encode();
        assert_eq!(Manifest::decode(&b), Ok(m.clone()));
        let mut t = b.clone();
        t.push(0);
        assert!(Manifest::decode(&t).is_err());
        assert!(Manifest::decode(&b[..b.len() - 1]).is_err());
        for bad in ["..", "a/../b", "/a", "a//b", "."] {
            let d = Manifest {
                kind: Kind::Directory,
                name: "d".into(),
                entries: vec![Entry {
                    path: bad.into(),
                    blob: ContentId([0; 32]),
                    len: 0,
                }],
            };
            assert!(Manifest::decode(&d.encode()).is_err(), "{bad}");
        }
        let bad_name = Manifest {
            name: "../x".into(),
            ..m
        };
        assert!(Manifest::decode(&bad_name.encode()).is_err());
    }
}
