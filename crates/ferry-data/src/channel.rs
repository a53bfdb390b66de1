//! Channels (issue 10 item 3; `data-layer.md` §1.5, §3.6), sans-IO: multicast posts stored in the
//! DHT value store, public ones readable by anyone who knows the id, private ones encrypted under
//! an epoch key that only approved members hold.
//!
//! # Keys
//!
//! * **Channel id** = the founder's Ed25519 *channel key* (Tox NGC's Chat ID model). It signs the
//!   channel state, the roster pages and the members' key bundles.
//! * **Author key**: each node's Ed25519 key that signs its posts, heads and (for admins) the
//!   membership certificates it issues. The member key `ferry channel approve` takes.
//! * **Box key**: the node's X25519 (Tox long-term) key; epoch keys are sealed to it, join
//!   requests come from it.
//!
//! # Items in the value store (all values ≤ [`MAX_VALUE_SIZE`] = 1000 bytes)
//!
//! | what | class | owner key | salt |
//! |---|---|---|---|
//! | [`ChannelState`] | mutable, seq = state version | channel key | `"ferry-chan-state"` |
//! | [`Roster`] page `i` (private) | mutable | channel key | `"ferry-chan-roster"` ‖ `i` u8 |
//! | [`KeyBundle`] of member `m` (private) | mutable | channel key | `"ferry-chan-key"` ‖ [`key_slot`]`(id, m)` |
//! | [`Head`] of author `a` | mutable, seq = latest post seq | author key `a` | `"ferry-chan-head"` ‖ channel id |
//! | [`Post`] | immutable (id = its target) | — | — |
//! | join request | mail envelope ([`crate::mailbox::seal`]) | — | at [`join_mailbox`] |
//!
//! Readers fetch the state, then (private) the roster pages to learn the members, then every
//! author's head (admins' heads for public channels), then the posts the head lists that they do
//! not have, walking each author's `prev` chain back to what they have, at most
//! [`MAX_HISTORY`] posts per channel. That is how a member who was offline catches up.
//!
//! # Who may post
//!
//! * Public channel: the admins listed in the state (a broadcast channel, as `data-layer.md` §3.6
//!   says: "posts signed by admins"). Anyone may join (read) by id; posts by others are dropped.
//! * Private channel: admins, and members holding a valid [`MemberCert`] issued by an admin of the
//!   state (not expired) who are not in the state's removed list beyond the `max_seq` recorded at
//!   their removal. Content is XChaCha20-Poly1305 under the epoch key; a post that does not open
//!   under the epoch key it names is dropped too.
//!
//! # Removal
//!
//! The founder removes a member by publishing a new state with a higher epoch and the member in
//! `removed` (with the highest post seq accepted from it), a new random epoch key, and new key
//! bundles (sealed to each remaining member) holding the last [`MAX_BUNDLE_EPOCHS`] epoch keys.
//! The removed member keeps the old keys (it can read what it could read) but cannot open posts
//! of the new epoch; its later posts are dropped by the removed list.
//!
//! Limits: [`MAX_ADMINS`] admins, [`MAX_REMOVED`] removal records (oldest dropped first; a
//! reader keeps what it saw), [`MAX_ROSTER_PAGES`] × [`ROSTER_PAGE`] members.

use std::collections::{BTreeMap, HashMap};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{
    KEY_SIZE, KeyPair, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey, SecretKey,
};
use ferry_wire::{Reader, WireError};

use crate::item::{MAX_VALUE_SIZE, MutableItem, OwnerKey, SIGNATURE_SIZE, Target};

/// Channel id: the founder's Ed25519 channel key (32 bytes).
pub type ChannelId = [u8; 32];

/// Salt of the channel state item.
pub const STATE_SALT: &[u8] = b"ferry-chan-state";
/// Salt prefix of roster pages.
pub const ROSTER_SALT: &[u8] = b"ferry-chan-roster";
/// Salt prefix of key bundles.
pub const KEY_SALT: &[u8] = b"ferry-chan-key";
/// Salt prefix of author heads.
pub const HEAD_SALT: &[u8] = b"ferry-chan-head";

/// Longest channel name, in bytes (UTF-8).
pub const MAX_NAME: usize = 48;
/// Most admins in a state.
pub const MAX_ADMINS: usize = 4;
/// Most removal records in a state.
pub const MAX_REMOVED: usize = 12;
/// Members per roster page.
pub const ROSTER_PAGE: usize = 30;
/// Most roster pages (so at most 240 members).
pub const MAX_ROSTER_PAGES: u8 = 8;
/// Post ids a head lists (newest first).
pub const HEAD_POSTS: usize = 16;
/// Epoch keys a key bundle carries (the newest ones).
pub const MAX_BUNDLE_EPOCHS: usize = 8;
/// Posts a reader keeps per channel (oldest dropped first): the bounded history.
pub const MAX_HISTORY: usize = 256;
/// Encoded size of a [`MemberCert`].
pub const CERT_SIZE: usize = 32 * 4 + 1 + 8 + SIGNATURE_SIZE;
/// Bytes of a post before its body: version 1, channel 32, author 32, seq 8, prev 32, epoch 4,
/// sent 8, body length 2, signature 64.
pub const POST_OVERHEAD: usize = 1 + 32 + 32 + 8 + 32 + 4 + 8 + 2 + SIGNATURE_SIZE;
/// Longest post body (ciphertext for private channels), in bytes.
pub const MAX_BODY: usize = MAX_VALUE_SIZE - POST_OVERHEAD;
/// XChaCha20-Poly1305 nonce (24) + tag (16) around a private post's content.
pub const SEAL_OVERHEAD: usize = 24 + 16;
/// Longest content ([`Content::encode`]) of a private post, in bytes.
pub const MAX_PRIVATE_CONTENT: usize = MAX_BODY - SEAL_OVERHEAD;
/// Role byte of an admin.
pub const ROLE_ADMIN: u8 = 1;
/// Role byte of a member.
pub const ROLE_MEMBER: u8 = 2;

/// Why a channel object was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Malformed encoding.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The object belongs to another channel.
    #[error("wrong channel")]
    WrongChannel,
    /// The author may not post (not an admin of a public channel; not a member, expired or
    /// removed in a private channel).
    #[error("author may not post")]
    NotAllowed,
    /// No key for the post's epoch, or the ciphertext does not open.
    #[error("cannot decrypt")]
    Decrypt,
    /// Too large for one item.
    #[error("too large")]
    TooLarge,
}

impl From<WireError> for ChannelError {
    fn from(_: WireError) -> Self {
        Self::Malformed("wire")
    }
}

fn verify(pk: &OwnerKey, msg: &[u8], sig: &[u8; SIGNATURE_SIZE]) -> Result<(), ChannelError> {
    let vk = VerifyingKey::from_bytes(pk).map_err(|_| ChannelError::BadSignature)?;
    vk.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| ChannelError::BadSignature)
}

fn salt_with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut s = prefix.to_vec();
    s.extend_from_slice(rest);
    s
}

/// Target of the channel state.
pub fn state_target(id: &ChannelId) -> Target {
    Target::mutable(id, STATE_SALT)
}

/// Salt of roster page `page`.
pub fn roster_salt(page: u8) -> Vec<u8> {
    salt_with(ROSTER_SALT, &[page])
}

/// `BLAKE3-derive("ferry v1 chan key slot", id ‖ member)`: hides which member a bundle is for.
pub fn key_slot(id: &ChannelId, member: &OwnerKey) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ferry v1 chan key slot");
    h.update(id);
    h.update(member);
    *h.finalize().as_bytes()
}

/// Salt of `member`'s key bundle.
pub fn key_salt(id: &ChannelId, member: &OwnerKey) -> Vec<u8> {
    salt_with(KEY_SALT, &key_slot(id, member))
}

/// Salt of an author's head in channel `id`.
pub fn head_salt(id: &ChannelId) -> Vec<u8> {
    salt_with(HEAD_SALT, id)
}

/// Target of `author`'s head in channel `id`.
pub fn head_target(id: &ChannelId, author: &OwnerKey) -> Target {
    Target::mutable(author, &head_salt(id))
}

/// Join-request mailbox of channel `id` for `epoch` (days, [`crate::mailbox::epoch_of`]):
/// `BLAKE3-derive("ferry v1 chan join", id ‖ epoch u64 BE)`.
pub fn join_mailbox(id: &ChannelId, epoch: u64) -> Target {
    let mut h = blake3::Hasher::new_derive_key("ferry v1 chan join");
    h.update(id);
    h.update(&epoch.to_be_bytes());
    Target(*h.finalize().as_bytes())
}

/// An admin: author key (signs certs and posts) and box key (receives join requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admin {
    /// Ed25519 author key.
    pub author: OwnerKey,
    /// X25519 box key.
    pub box_pk: PublicKey,
}

/// A member removed at some epoch: posts with `seq > max_seq` from it are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The member's author key.
    pub member: OwnerKey,
    /// Highest post seq accepted from it.
    pub max_seq: u64,
}

/// The founder-signed, versioned channel state (value of the mutable item at
/// [`state_target`]; its `seq` is the version).
///
/// `[1][flags u8: bit 0 private][name_len u8 ≤ 48][name][n u8 1..=4][(author 32, box 32)×n]
/// [epoch u32][roster_pages u8 ≤ 8][r u8 ≤ 12][(member 32, max_seq u64)×r]` (≤ 794 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelState {
    /// Private (encrypted, members approved by admins) or public.
    pub private: bool,
    /// Display name (≤ [`MAX_NAME`] bytes).
    pub name: String,
    /// Admins; the first is the founder's author identity.
    pub admins: Vec<Admin>,
    /// Current epoch (private: ≥ 1; public: 0).
    pub epoch: u32,
    /// Roster pages in use (private).
    pub roster_pages: u8,
    /// Removed members.
    pub removed: Vec<Removed>,
}

impl ChannelState {
    /// Encoding (layout above).
    ///
    /// # Errors
    /// [`ChannelError::TooLarge`] when a list or the name is over its cap.
    pub fn encode(&self) -> Result<Vec<u8>, ChannelError> {
        if self.name.len() > MAX_NAME
            || self.admins.is_empty()
            || self.admins.len() > MAX_ADMINS
            || self.removed.len() > MAX_REMOVED
            || self.roster_pages > MAX_ROSTER_PAGES
        {
            return Err(ChannelError::TooLarge);
        }
        let mut o = vec![1, u8::from(self.private), self.name.len() as u8];
        o.extend_from_slice(self.name.as_bytes());
        o.push(self.admins.len() as u8);
        for a in &self.admins {
            o.extend_from_slice(&a.author);
            o.extend_from_slice(a.box_pk.as_bytes());
        }
        o.extend_from_slice(&self.epoch.to_be_bytes());
        o.push(self.roster_pages);
        o.push(self.removed.len() as u8);
        for r in &self.removed {
            o.extend_from_slice(&r.member);
            o.extend_from_slice(&r.max_seq.to_be_bytes());
        }
        Ok(o)
    }

    /// Parses a state value (exact length).
    ///
    /// # Errors
    /// [`ChannelError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        if r.u8("version")? != 1 {
            return Err(ChannelError::Malformed("state version"));
        }
        let flags = r.u8("flags")?;
        if flags > 1 {
            return Err(ChannelError::Malformed("state flags"));
        }
        let n = usize::from(r.u8("name len")?);
        if n > MAX_NAME {
            return Err(ChannelError::Malformed("name too long"));
        }
        let name = String::from_utf8(r.take(n, "name")?.to_vec())
            .map_err(|_| ChannelError::Malformed("name not UTF-8"))?;
        let na = usize::from(r.u8("admins")?);
        if na == 0 || na > MAX_ADMINS {
            return Err(ChannelError::Malformed("admin count"));
        }
        let mut admins = Vec::with_capacity(na);
        for _ in 0..na {
            admins.push(Admin {
                author: r.array("admin author")?,
                box_pk: PublicKey(r.array("admin box")?),
            });
        }
        let epoch = u32::from_be_bytes(r.array("epoch")?);
        let roster_pages = r.u8("roster pages")?;
        if roster_pages > MAX_ROSTER_PAGES {
            return Err(ChannelError::Malformed("roster pages"));
        }
        let nr = usize::from(r.u8("removed")?);
        if nr > MAX_REMOVED {
            return Err(ChannelError::Malformed("removed count"));
        }
        let mut removed = Vec::with_capacity(nr);
        for _ in 0..nr {
            removed.push(Removed {
                member: r.array("removed member")?,
                max_seq: u64::from_be_bytes(r.array("removed seq")?),
            });
        }
        r.finish()?;
        Ok(Self {
            private: flags == 1,
            name,
            admins,
            epoch,
            roster_pages,
            removed,
        })
    }

    /// The state from its mutable item, checking owner (= channel id), salt and signature.
    ///
    /// # Errors
    /// [`ChannelError`].
    pub fn from_item(id: &ChannelId, item: &MutableItem) -> Result<Self, ChannelError> {
        if &item.pk != id || item.salt != STATE_SALT {
            return Err(ChannelError::WrongChannel);
        }
        item.verify().map_err(|_| ChannelError::BadSignature)?;
        Self::decode(&item.value)
    }

    /// Whether `author` is an admin.
    pub fn is_admin(&self, author: &OwnerKey) -> bool {
        self.admins.iter().any(|a| &a.author == author)
    }

    /// The removal record of `member`, if any.
    pub fn removal(&self, member: &OwnerKey) -> Option<&Removed> {
        self.removed.iter().find(|r| &r.member == member)
    }

    /// Adds a removal record, dropping the oldest when full.
    pub fn push_removed(&mut self, r: Removed) {
        self.removed.retain(|x| x.member != r.member);
        if self.removed.len() >= MAX_REMOVED {
            self.removed.remove(0);
        }
        self.removed.push(r);
    }
}

/// A founder-signed roster page: the author keys of members (readers poll their heads).
/// `[n u8 ≤ 30][member 32 × n]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster(pub Vec<OwnerKey>);

impl Roster {
    /// Encoding.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.0.len().min(ROSTER_PAGE);
        let mut o = vec![n as u8];
        for m in &self.0[..n] {
            o.extend_from_slice(m);
        }
        o
    }

    /// Parses a page (exact length).
    ///
    /// # Errors
    /// [`ChannelError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        let n = usize::from(r.u8("roster n")?);
        if n > ROSTER_PAGE {
            return Err(ChannelError::Malformed("roster count"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(r.array("roster member")?);
        }
        r.finish()?;
        Ok(Self(v))
    }
}

/// Splits members into roster pages.
pub fn roster_pages(members: &[OwnerKey]) -> Vec<Roster> {
    members
        .chunks(ROSTER_PAGE)
        .take(usize::from(MAX_ROSTER_PAGES))
        .map(|c| Roster(c.to_vec()))
        .collect()
}

/// An admin-signed membership certificate of a private channel.
///
/// `[channel 32][member 32][box 32][role u8][expires_unix u64][issuer 32][sig 64]` (201 bytes);
/// the issuer signs `"ferry-chan-cert-v1" ‖` the first 137 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberCert {
    /// The channel.
    pub channel: ChannelId,
    /// The member's author key.
    pub member: OwnerKey,
    /// The member's box key (epoch keys are sealed to it).
    pub box_pk: PublicKey,
    /// [`ROLE_ADMIN`] or [`ROLE_MEMBER`].
    pub role: u8,
    /// Expiry, Unix seconds.
    pub expires_unix: u64,
    /// The issuing admin's author key.
    pub issuer: OwnerKey,
    /// Ed25519 signature by `issuer`.
    pub sig: [u8; SIGNATURE_SIZE],
}

impl MemberCert {
    fn body(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(18 + 137);
        m.extend_from_slice(b"ferry-chan-cert-v1");
        m.extend_from_slice(&self.channel);
        m.extend_from_slice(&self.member);
        m.extend_from_slice(self.box_pk.as_bytes());
        m.push(self.role);
        m.extend_from_slice(&self.expires_unix.to_be_bytes());
        m.extend_from_slice(&self.issuer);
        m
    }

    /// Issues a certificate signed by `issuer`.
    pub fn issue(
        issuer: &SigningKey,
        channel: ChannelId,
        member: OwnerKey,
        box_pk: PublicKey,
        role: u8,
        expires_unix: u64,
    ) -> Self {
        let mut c = Self {
            channel,
            member,
            box_pk,
            role,
            expires_unix,
            issuer: issuer.verifying_key().to_bytes(),
            sig: [0; SIGNATURE_SIZE],
        };
        c.sig = issuer.sign(&c.body()).to_bytes();
        c
    }

    /// Checks channel, issuer (an admin of `state`), expiry and signature.
    ///
    /// # Errors
    /// [`ChannelError`].
    pub fn verify(
        &self,
        id: &ChannelId,
        state: &ChannelState,
        now_unix: u64,
    ) -> Result<(), ChannelError> {
        if &self.channel != id {
            return Err(ChannelError::WrongChannel);
        }
        if !state.is_admin(&self.issuer) || self.expires_unix < now_unix {
            return Err(ChannelError::NotAllowed);
        }
        verify(&self.issuer, &self.body(), &self.sig)
    }

    /// Appends the encoding.
    pub fn encode(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&self.body()[18..]);
        o.extend_from_slice(&self.sig);
    }

    /// Parses one certificate.
    ///
    /// # Errors
    /// [`WireError`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            channel: r.array("cert channel")?,
            member: r.array("cert member")?,
            box_pk: PublicKey(r.array("cert box")?),
            role: r.u8("cert role")?,
            expires_unix: u64::from_be_bytes(r.array("cert expiry")?),
            issuer: r.array("cert issuer")?,
            sig: r.array("cert sig")?,
        })
    }
}

/// An author's head in a channel (value of the mutable item at [`head_target`], item seq =
/// `seq`): the author's certificate (private channels) and its newest post ids.
///
/// `[flags u8: bit 0 cert][cert 201]?[seq u64][n u8 ≤ 16][post id 32 × n]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The author's membership certificate (private channels, non-admins).
    pub cert: Option<MemberCert>,
    /// Sequence number of the newest post.
    pub seq: u64,
    /// Newest post ids (targets of immutable items), newest first.
    pub posts: Vec<[u8; 32]>,
}

impl Head {
    /// Encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = vec![u8::from(self.cert.is_some())];
        if let Some(c) = &self.cert {
            c.encode(&mut o);
        }
        o.extend_from_slice(&self.seq.to_be_bytes());
        let n = self.posts.len().min(HEAD_POSTS);
        o.push(n as u8);
        for p in &self.posts[..n] {
            o.extend_from_slice(p);
        }
        o
    }

    /// Parses a head (exact length).
    ///
    /// # Errors
    /// [`ChannelError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        let cert = match r.u8("head flags")? {
            0 => None,
            1 => Some(MemberCert::decode(&mut r)?),
            _ => return Err(ChannelError::Malformed("head flags")),
        };
        let seq = u64::from_be_bytes(r.array("head seq")?);
        let n = usize::from(r.u8("head n")?);
        if n > HEAD_POSTS {
            return Err(ChannelError::Malformed("head count"));
        }
        let mut posts = Vec::with_capacity(n);
        for _ in 0..n {
            posts.push(r.array("head post")?);
        }
        r.finish()?;
        Ok(Self { cert, seq, posts })
    }

    /// The head from its mutable item (checks salt and signature; the owner is the author).
    ///
    /// # Errors
    /// [`ChannelError`].
    pub fn from_item(id: &ChannelId, item: &MutableItem) -> Result<Self, ChannelError> {
        if item.salt != head_salt(id) {
            return Err(ChannelError::WrongChannel);
        }
        item.verify().map_err(|_| ChannelError::BadSignature)?;
        Self::decode(&item.value)
    }
}

/// A post (an immutable item; its id is [`Target::immutable`] of the encoding).
///
/// `[1][channel 32][author 32][seq u64][prev 32][epoch u32][sent_unix u64][len u16][body][sig 64]`;
/// the author signs `"ferry-chan-post-v1" ‖` everything before the signature. `prev` is the id of
/// the author's previous post (zeros for its first). `epoch` 0 = plaintext (public channel);
/// otherwise `body = nonce 24 ‖ XChaCha20-Poly1305(epoch key, nonce, content, aad = channel ‖
/// author ‖ seq u64 ‖ epoch u32)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    /// The channel.
    pub channel: ChannelId,
    /// The author's Ed25519 key.
    pub author: OwnerKey,
    /// Per-author sequence number, from 1.
    pub seq: u64,
    /// Id of the author's previous post, zeros for none.
    pub prev: [u8; 32],
    /// Epoch whose key encrypts the body (0 = plaintext).
    pub epoch: u32,
    /// Sent at, Unix seconds (the author's claim).
    pub sent_unix: u64,
    /// Content (public) or nonce ‖ ciphertext (private), ≤ [`MAX_BODY`].
    pub body: Vec<u8>,
    /// Author's signature.
    pub sig: [u8; SIGNATURE_SIZE],
}

fn aad(channel: &ChannelId, author: &OwnerKey, seq: u64, epoch: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(76);
    a.extend_from_slice(channel);
    a.extend_from_slice(author);
    a.extend_from_slice(&seq.to_be_bytes());
    a.extend_from_slice(&epoch.to_be_bytes());
    a
}

impl Post {
    fn unsigned(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(POST_OVERHEAD + self.body.len());
        o.push(1);
        o.extend_from_slice(&self.channel);
        o.extend_from_slice(&self.author);
        o.extend_from_slice(&self.seq.to_be_bytes());
        o.extend_from_slice(&self.prev);
        o.extend_from_slice(&self.epoch.to_be_bytes());
        o.extend_from_slice(&self.sent_unix.to_be_bytes());
        o.extend_from_slice(&(self.body.len() as u16).to_be_bytes());
        o.extend_from_slice(&self.body);
        o
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut m = b"ferry-chan-post-v1".to_vec();
        m.extend_from_slice(&self.unsigned());
        m
    }

    /// Writes and signs a post. With `epoch_key = Some((epoch, key))` the content is encrypted
    /// under it (a fresh random nonce from `rng`).
    ///
    /// # Errors
    /// [`ChannelError::TooLarge`] when the body would exceed [`MAX_BODY`].
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        author: &SigningKey,
        channel: ChannelId,
        seq: u64,
        prev: [u8; 32],
        sent_unix: u64,
        content: &[u8],
        epoch_key: Option<(u32, &[u8; 32])>,
        rng: &mut FerryRng,
    ) -> Result<Self, ChannelError> {
        let author_pk = author.verifying_key().to_bytes();
        let (epoch, body) = match epoch_key {
            None => (0, content.to_vec()),
            Some((epoch, key)) => {
                if content.len() > MAX_PRIVATE_CONTENT {
                    return Err(ChannelError::TooLarge);
                }
                let nonce: [u8; 24] = rng.bytes();
                let ct = XChaCha20Poly1305::new(key.into())
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: content,
                            aad: &aad(&channel, &author_pk, seq, epoch),
                        },
                    )
                    .map_err(|_| ChannelError::TooLarge)?;
                let mut b = nonce.to_vec();
                b.extend_from_slice(&ct);
                (epoch, b)
            }
        };
        if body.len() > MAX_BODY {
            return Err(ChannelError::TooLarge);
        }
        let mut p = Self {
            channel,
            author: author_pk,
            seq,
            prev,
            epoch,
            sent_unix,
            body,
            sig: [0; SIGNATURE_SIZE],
        };
        p.sig = author.sign(&p.signed_message()).to_bytes();
        Ok(p)
    }

    /// Encoding (the immutable item's value).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = self.unsigned();
        o.extend_from_slice(&self.sig);
        o
    }

    /// The post's id (its immutable target).
    pub fn id(&self) -> [u8; 32] {
        Target::immutable(&self.encode()).0
    }

    /// Parses a post (exact length; the signature is checked by [`Post::verify`]).
    ///
    /// # Errors
    /// [`ChannelError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        if r.u8("post version")? != 1 {
            return Err(ChannelError::Malformed("post version"));
        }
        let channel = r.array("post channel")?;
        let author = r.array("post author")?;
        let seq = u64::from_be_bytes(r.array("post seq")?);
        let prev = r.array("post prev")?;
        let epoch = u32::from_be_bytes(r.array("post epoch")?);
        let sent_unix = u64::from_be_bytes(r.array("post sent")?);
        let len = usize::from(r.u16_be("post len")?);
        if len > MAX_BODY {
            return Err(ChannelError::Malformed("post body too long"));
        }
        let body = r.take(len, "post body")?.to_vec();
        let sig = r.array("post sig")?;
        r.finish()?;
        Ok(Self {
            channel,
            author,
            seq,
            prev,
            epoch,
            sent_unix,
            body,
            sig,
        })
    }

    /// Checks that the post may stand in channel `id` under `state`: signature, channel, and the
    /// posting rules (module docs); `cert` is the author's certificate from its head.
    ///
    /// # Errors
    /// [`ChannelError`].
    pub fn verify(
        &self,
        id: &ChannelId,
        state: &ChannelState,
        cert: Option<&MemberCert>,
        now_unix: u64,
    ) -> Result<(), ChannelError> {
        if &self.channel != id {
            return Err(ChannelError::WrongChannel);
        }
        verify(&self.author, &self.signed_message(), &self.sig)?;
        if self.seq == 0 {
            return Err(ChannelError::Malformed("post seq 0"));
        }
        if !state.private {
            if self.epoch != 0 || !state.is_admin(&self.author) {
                return Err(ChannelError::NotAllowed);
            }
            return Ok(());
        }
        if self.epoch == 0 {
            return Err(ChannelError::NotAllowed);
        }
        if let Some(r) = state.removal(&self.author)
            && self.seq > r.max_seq
        {
            return Err(ChannelError::NotAllowed);
        }
        if state.is_admin(&self.author) {
            return Ok(());
        }
        let c = cert.ok_or(ChannelError::NotAllowed)?;
        if c.member != self.author {
            return Err(ChannelError::NotAllowed);
        }
        c.verify(id, state, now_unix)
    }

    /// The content: the body itself (epoch 0) or the body opened with the epoch's key from
    /// `keys`.
    ///
    /// # Errors
    /// [`ChannelError::Decrypt`].
    pub fn open(&self, keys: &EpochKeys) -> Result<Vec<u8>, ChannelError> {
        if self.epoch == 0 {
            return Ok(self.body.clone());
        }
        let key = keys.get(self.epoch).ok_or(ChannelError::Decrypt)?;
        if self.body.len() < SEAL_OVERHEAD {
            return Err(ChannelError::Decrypt);
        }
        let (nonce, ct) = self.body.split_at(24);
        XChaCha20Poly1305::new(key.into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad(&self.channel, &self.author, self.seq, self.epoch),
                },
            )
            .map_err(|_| ChannelError::Decrypt)
    }
}

/// What a post carries: text, or a small file inline.
///
/// `[0][utf-8 text]` or `[1][name_len u8][name][bytes]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A text message.
    Text(String),
    /// A small file: name and bytes.
    File {
        /// File name (≤ 255 bytes).
        name: String,
        /// The bytes.
        data: Vec<u8>,
    },
}

impl Content {
    /// Encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Text(t) => {
                let mut o = vec![0];
                o.extend_from_slice(t.as_bytes());
                o
            }
            Self::File { name, data } => {
                let n = &name.as_bytes()[..name.len().min(255)];
                let mut o = vec![1, n.len() as u8];
                o.extend_from_slice(n);
                o.extend_from_slice(data);
                o
            }
        }
    }

    /// Parses content.
    ///
    /// # Errors
    /// [`ChannelError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, ChannelError> {
        match b.split_first() {
            Some((0, t)) => Ok(Self::Text(String::from_utf8_lossy(t).into_owned())),
            Some((1, rest)) => {
                let (&n, rest) = rest
                    .split_first()
                    .ok_or(ChannelError::Malformed("file name"))?;
                let n = usize::from(n);
                if rest.len() < n {
                    return Err(ChannelError::Malformed("file name"));
                }
                Ok(Self::File {
                    name: String::from_utf8_lossy(&rest[..n]).into_owned(),
                    data: rest[n..].to_vec(),
                })
            }
            _ => Err(ChannelError::Malformed("content kind")),
        }
    }
}

/// Epoch keys a member holds (epoch → 32-byte XChaCha20-Poly1305 key), at most
/// [`MAX_BUNDLE_EPOCHS`] × 4 (oldest dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochKeys(pub BTreeMap<u32, [u8; 32]>);

impl EpochKeys {
    /// Key of `epoch`.
    pub fn get(&self, epoch: u32) -> Option<&[u8; 32]> {
        self.0.get(&epoch)
    }

    /// Newest epoch and its key.
    pub fn newest(&self) -> Option<(u32, &[u8; 32])> {
        self.0.iter().next_back().map(|(e, k)| (*e, k))
    }

    /// Adds a key, dropping the oldest beyond the cap.
    pub fn insert(&mut self, epoch: u32, key: [u8; 32]) {
        self.0.insert(epoch, key);
        while self.0.len() > MAX_BUNDLE_EPOCHS * 4 {
            self.0.pop_first();
        }
    }
}

/// A member's key bundle (value of the channel-key-signed mutable item at [`key_salt`]): its
/// certificate and the newest epoch keys sealed to its box key.
///
/// `[cert 201][ephemeral pk 32][nonce 24][crypto_box(ephemeral sk, member box pk)([n u8 ≤ 8]
/// [(epoch u32, key 32) × n])]` (≤ 562 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBundle {
    /// The member's certificate.
    pub cert: MemberCert,
    /// Sealed keys.
    pub sealed: Vec<u8>,
}

impl KeyBundle {
    /// Seals the newest [`MAX_BUNDLE_EPOCHS`] keys of `keys` to `cert.box_pk`.
    pub fn seal(cert: MemberCert, keys: &EpochKeys, rng: &mut FerryRng) -> Self {
        let newest: Vec<_> = keys.0.iter().rev().take(MAX_BUNDLE_EPOCHS).collect();
        let mut plain = vec![newest.len() as u8];
        for (e, k) in newest {
            plain.extend_from_slice(&e.to_be_bytes());
            plain.extend_from_slice(k);
        }
        let eph = KeyPair::generate(rng);
        let nonce = Nonce::random(rng);
        let ct = PrecomputedKey::new(&eph.secret, &cert.box_pk)
            .encrypt(&nonce, &plain)
            .expect("crypto_box of ≤ 289 bytes cannot fail");
        let mut sealed = eph.public.as_bytes().to_vec();
        sealed.extend_from_slice(&nonce.0);
        sealed.extend_from_slice(&ct);
        Self { cert, sealed }
    }

    /// Opens the keys with the member's box secret.
    ///
    /// # Errors
    /// [`ChannelError::Decrypt`], [`ChannelError::Malformed`].
    pub fn open(&self, box_secret: &SecretKey) -> Result<EpochKeys, ChannelError> {
        let s = &self.sealed;
        if s.len() < KEY_SIZE + NONCE_SIZE + MAC_SIZE {
            return Err(ChannelError::Decrypt);
        }
        let eph = PublicKey::from_slice(&s[..KEY_SIZE]).ok_or(ChannelError::Decrypt)?;
        let mut n = [0; NONCE_SIZE];
        n.copy_from_slice(&s[KEY_SIZE..KEY_SIZE + NONCE_SIZE]);
        let plain = PrecomputedKey::new(box_secret, &eph)
            .decrypt(&Nonce(n), &s[KEY_SIZE + NONCE_SIZE..])
            .map_err(|_| ChannelError::Decrypt)?;
        let mut r = Reader::new(&plain);
        let count = usize::from(r.u8("keys n")?);
        if count > MAX_BUNDLE_EPOCHS {
            return Err(ChannelError::Malformed("key count"));
        }
        let mut keys = EpochKeys::default();
        for _ in 0..count {
            let e = u32::from_be_bytes(r.array("key epoch")?);
            keys.insert(e, r.array("key")?);
        }
        r.finish()?;
        Ok(keys)
    }

    /// Encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(CERT_SIZE + self.sealed.len());
        self.cert.encode(&mut o);
        o.extend_from_slice(&self.sealed);
        o
    }

    /// Parses a bundle.
    ///
    /// # Errors
    /// [`ChannelError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        let cert = MemberCert::decode(&mut r)?;
        let sealed = r.rest().to_vec();
        if sealed.len() > KEY_SIZE + NONCE_SIZE + MAC_SIZE + 1 + 36 * MAX_BUNDLE_EPOCHS {
            return Err(ChannelError::Malformed("bundle too long"));
        }
        Ok(Self { cert, sealed })
    }
}

/// A join request (body of a mail envelope sealed from the joiner's box key to an admin's box
/// key at [`join_mailbox`]): `"FCJ1"[channel 32][author 32][sig 64]`, the author signing
/// `"ferry-chan-join-v1" ‖ channel ‖ box pk` (binding its author key to the box key the mail
/// envelope authenticates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// The channel.
    pub channel: ChannelId,
    /// The joiner's author key.
    pub author: OwnerKey,
    /// Signature.
    pub sig: [u8; SIGNATURE_SIZE],
}

/// Encoded size of a [`JoinRequest`].
pub const JOIN_REQUEST_SIZE: usize = 4 + 32 + 32 + SIGNATURE_SIZE;

fn join_message(channel: &ChannelId, box_pk: &PublicKey) -> Vec<u8> {
    let mut m = b"ferry-chan-join-v1".to_vec();
    m.extend_from_slice(channel);
    m.extend_from_slice(box_pk.as_bytes());
    m
}

impl JoinRequest {
    /// Signs a request by `author` whose box key is `box_pk`.
    pub fn new(author: &SigningKey, channel: ChannelId, box_pk: &PublicKey) -> Self {
        Self {
            channel,
            author: author.verifying_key().to_bytes(),
            sig: author.sign(&join_message(&channel, box_pk)).to_bytes(),
        }
    }

    /// Encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = b"FCJ1".to_vec();
        o.extend_from_slice(&self.channel);
        o.extend_from_slice(&self.author);
        o.extend_from_slice(&self.sig);
        o
    }

    /// Parses a request and checks it against the box key that sent it.
    ///
    /// # Errors
    /// [`ChannelError`].
    pub fn decode_verify(b: &[u8], sender_box: &PublicKey) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        if &r.array::<4>("join magic")? != b"FCJ1" {
            return Err(ChannelError::Malformed("join magic"));
        }
        let q = Self {
            channel: r.array("join channel")?,
            author: r.array("join author")?,
            sig: r.array("join sig")?,
        };
        r.finish()?;
        verify(&q.author, &join_message(&q.channel, sender_box), &q.sig)?;
        Ok(q)
    }
}

/// One accepted post, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The post's id.
    pub id: [u8; 32],
    /// The post.
    pub post: Post,
    /// Its content.
    pub content: Content,
}

/// A reader's view of one channel: verified posts, at most [`MAX_HISTORY`] (oldest by
/// `(sent_unix, author, seq)` dropped), deduplicated by (author, seq).
#[derive(Clone, Debug, Default)]
pub struct History {
    posts: BTreeMap<(u64, OwnerKey, u64), Accepted>,
    by_author: HashMap<(OwnerKey, u64), [u8; 32]>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the post `(author, seq)` is held.
    pub fn has(&self, author: &OwnerKey, seq: u64) -> bool {
        self.by_author.contains_key(&(*author, seq))
    }

    /// Whether a post with this id is held.
    pub fn has_id(&self, id: &[u8; 32]) -> bool {
        self.posts.values().any(|a| &a.id == id)
    }

    /// Number of posts held.
    pub fn len(&self) -> usize {
        self.posts.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.posts.is_empty()
    }

    /// Verifies and opens `post`, adding it when new. Returns it when added.
    ///
    /// # Errors
    /// The [`ChannelError`] that dropped it.
    pub fn offer(
        &mut self,
        id: &ChannelId,
        state: &ChannelState,
        cert: Option<&MemberCert>,
        keys: &EpochKeys,
        post: Post,
        now_unix: u64,
    ) -> Result<Option<&Accepted>, ChannelError> {
        if self.has(&post.author, post.seq) {
            return Ok(None);
        }
        post.verify(id, state, cert, now_unix)?;
        let content = Content::decode(&post.open(keys)?)?;
        let key = (post.sent_unix, post.author, post.seq);
        if self.posts.len() >= MAX_HISTORY {
            if self.posts.keys().next().is_some_and(|k| *k > key) {
                return Ok(None);
            }
            if let Some((_, old)) = self.posts.pop_first() {
                self.by_author.remove(&(old.post.author, old.post.seq));
            }
        }
        let pid = post.id();
        self.by_author.insert((post.author, post.seq), pid);
        self.posts.insert(
            key,
            Accepted {
                id: pid,
                post,
                content,
            },
        );
        Ok(self.posts.get(&key))
    }

    /// Drops posts that no longer verify under a new state (e.g. a removed member's posts
    /// above its `max_seq`).
    pub fn retain_valid(&mut self, state: &ChannelState) {
        let by_author = &mut self.by_author;
        self.posts.retain(|_, a| {
            let ok = state
                .removal(&a.post.author)
                .is_none_or(|r| a.post.seq <= r.max_seq);
            if !ok {
                by_author.remove(&(a.post.author, a.post.seq));
            }
            ok
        });
    }

    /// Posts, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Accepted> {
        self.posts.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sk(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }
    fn pk(n: u8) -> OwnerKey {
        sk(n).verifying_key().to_bytes()
    }
    fn boxkp(n: u8) -> KeyPair {
        KeyPair::from_secret(SecretKey::from_bytes([n; 32]))
    }

    fn private_state() -> (ChannelId, ChannelState) {
        let id = pk(100);
        let st = ChannelState {
            private: true,
            name: "club".into(),
            admins: vec![Admin {
                author: pk(1),
                box_pk: boxkp(1).public,
            }],
            epoch: 1,
            roster_pages: 1,
            removed: vec![],
        };
        (id, st)
    }

    #[test]
    fn state_round_trip_and_signature() {
        let (id, st) = private_state();
        let v = st.encode().expect("encode");
        assert_eq!(ChannelState::decode(&v), Ok(st.clone()));
        let item = MutableItem::sign(&sk(100), STATE_SALT, 1, &v);
        assert_eq!(ChannelState::from_item(&id, &item), Ok(st.clone()));
        // Signed by someone else (an attacker's state for this channel id): refused.
        let mut forged = MutableItem::sign(&sk(7), STATE_SALT, 2, &v);
        assert_eq!(
            ChannelState::from_item(&id, &forged),
            Err(ChannelError::WrongChannel)
        );
        forged.pk = id;
        assert_eq!(
            ChannelState::from_item(&id, &forged),
            Err(ChannelError::BadSignature)
        );
        // Full state fits one item.
        let full = ChannelState {
            private: true,
            name: "x".repeat(MAX_NAME),
            admins: vec![
                Admin {
                    author: [1; 32],
                    box_pk: PublicKey([2; 32])
                };
                MAX_ADMINS
            ],
            epoch: 9,
            roster_pages: MAX_ROSTER_PAGES,
            removed: vec![
                Removed {
                    member: [3; 32],
                    max_seq: 4
                };
                MAX_REMOVED
            ],
        };
        assert!(full.encode().expect("full").len() <= MAX_VALUE_SIZE);
        let mut over = full.clone();
        over.admins.push(over.admins[0]);
        assert_eq!(over.encode(), Err(ChannelError::TooLarge));
    }

    #[test]
    fn private_posts_members_non_members_and_removal() {
        let mut rng = FerryRng::from_u64(1);
        let (id, mut st) = private_state();
        let mut keys = EpochKeys::default();
        keys.insert(1, [9; 32]);
        let member = sk(2);
        let cert = MemberCert::issue(&sk(1), id, pk(2), boxkp(2).public, ROLE_MEMBER, 1000);
        let content = Content::Text("hello".into()).encode();
        let p = Post::create(
            &member,
            id,
            1,
            [0; 32],
            5,
            &content,
            Some((1, &[9; 32])),
            &mut rng,
        )
        .expect("post");
        let back = Post::decode(&p.encode()).expect("decode");
        assert_eq!(back, p);
        assert_eq!(p.verify(&id, &st, Some(&cert), 10), Ok(()));
        assert_eq!(
            Content::decode(&p.open(&keys).expect("open")),
            Ok(Content::Text("hello".into()))
        );
        // Expired cert, no cert, a cert for someone else, a self-issued cert: refused.
        assert_eq!(
            p.verify(&id, &st, Some(&cert), 2000),
            Err(ChannelError::NotAllowed)
        );
        assert_eq!(p.verify(&id, &st, None, 10), Err(ChannelError::NotAllowed));
        let other = MemberCert::issue(&sk(1), id, pk(3), boxkp(3).public, ROLE_MEMBER, 1000);
        assert_eq!(
            p.verify(&id, &st, Some(&other), 10),
            Err(ChannelError::NotAllowed)
        );
        let selfish = MemberCert::issue(&sk(2), id, pk(2), boxkp(2).public, ROLE_MEMBER, 1000);
        assert_eq!(
            p.verify(&id, &st, Some(&selfish), 10),
            Err(ChannelError::NotAllowed)
        );
        // A tampered post.
        let mut t = p.clone();
        t.body[30] ^= 1;
        assert_eq!(
            t.verify(&id, &st, Some(&cert), 10),
            Err(ChannelError::BadSignature)
        );
        // A non-member without the key cannot read; with the wrong key neither.
        let mut wrong = EpochKeys::default();
        wrong.insert(1, [8; 32]);
        assert_eq!(p.open(&wrong), Err(ChannelError::Decrypt));
        assert_eq!(p.open(&EpochKeys::default()), Err(ChannelError::Decrypt));
        // Removal at max_seq 1: seq 1 stays, seq 2 is dropped.
        st.push_removed(Removed {
            member: pk(2),
            max_seq: 1,
        });
        assert_eq!(p.verify(&id, &st, Some(&cert), 10), Ok(()));
        let p2 = Post::create(
            &member,
            id,
            2,
            p.id(),
            6,
            &content,
            Some((1, &[9; 32])),
            &mut rng,
        )
        .expect("post");
        assert_eq!(
            p2.verify(&id, &st, Some(&cert), 10),
            Err(ChannelError::NotAllowed)
        );
        // Plaintext posts are refused in a private channel.
        let plain = Post::create(&sk(1), id, 1, [0; 32], 5, &content, None, &mut rng).expect("p");
        assert_eq!(
            plain.verify(&id, &st, None, 10),
            Err(ChannelError::NotAllowed)
        );
    }

    #[test]
    fn public_posts_admins_only() {
        let mut rng = FerryRng::from_u64(2);
        let (id, mut st) = private_state();
        st.private = false;
        st.epoch = 0;
        let c = Content::Text("news".into()).encode();
        let a = Post::create(&sk(1), id, 1, [0; 32], 1, &c, None, &mut rng).expect("a");
        assert_eq!(a.verify(&id, &st, None, 0), Ok(()));
        let b = Post::create(&sk(5), id, 1, [0; 32], 1, &c, None, &mut rng).expect("b");
        assert_eq!(b.verify(&id, &st, None, 0), Err(ChannelError::NotAllowed));
        // Another channel's post.
        assert_eq!(
            a.verify(&pk(99), &st, None, 0),
            Err(ChannelError::WrongChannel)
        );
    }

    #[test]
    fn bundles_seal_to_the_member_only() {
        let mut rng = FerryRng::from_u64(3);
        let (id, _) = private_state();
        let cert = MemberCert::issue(&sk(1), id, pk(2), boxkp(2).public, ROLE_MEMBER, 1000);
        let mut keys = EpochKeys::default();
        for e in 1..=10 {
            keys.insert(e, [e as u8; 32]);
        }
        let b = KeyBundle::seal(cert, &keys, &mut rng);
        let enc = b.encode();
        assert!(enc.len() <= MAX_VALUE_SIZE);
        let back = KeyBundle::decode(&enc).expect("decode");
        assert_eq!(back, b);
        let got = back.open(&boxkp(2).secret).expect("open");
        assert_eq!(got.0.len(), MAX_BUNDLE_EPOCHS);
        assert_eq!(got.newest(), Some((10, &[10; 32])));
        assert_eq!(back.open(&boxkp(3).secret), Err(ChannelError::Decrypt));
    }

    #[test]
    fn join_request_binds_box_key() {
        let (id, _) = private_state();
        let q = JoinRequest::new(&sk(2), id, &boxkp(2).public);
        let enc = q.encode();
        assert_eq!(enc.len(), JOIN_REQUEST_SIZE);
        assert_eq!(JoinRequest::decode_verify(&enc, &boxkp(2).public), Ok(q));
        assert_eq!(
            JoinRequest::decode_verify(&enc, &boxkp(3).public),
            Err(ChannelError::BadSignature)
        );
    }

    #[test]
    fn heads_and_rosters() {
        let (id, _) = private_state();
        let cert = MemberCert::issue(&sk(1), id, pk(2), boxkp(2).public, ROLE_MEMBER, 1000);
        let h = Head {
            cert: Some(cert),
            seq: 7,
            posts: vec![[1; 32]; HEAD_POSTS],
        };
        let v = h.encode();
        assert!(v.len() <= MAX_VALUE_SIZE);
        let item = MutableItem::sign(&sk(2), &head_salt(&id), 7, &v);
        assert_eq!(Head::from_item(&id, &item), Ok(h));
        assert_eq!(
            Head::from_item(&pk(5), &item),
            Err(ChannelError::WrongChannel)
        );
        let members: Vec<OwnerKey> = (0..70u8).map(|i| [i; 32]).collect();
        let pages = roster_pages(&members);
        assert_eq!(pages.len(), 3);
        for p in &pages {
            assert!(p.encode().len() <= MAX_VALUE_SIZE);
            assert_eq!(Roster::decode(&p.encode()).as_ref(), Ok(p));
        }
        assert!(key_salt(&id, &pk(2)).len() <= crate::item::MAX_SALT_SIZE);
        assert!(head_salt(&id).len() <= crate::item::MAX_SALT_SIZE);
    }

    #[test]
    fn history_is_bounded_and_deduplicated() {
        let mut rng = FerryRng::from_u64(4);
        let (id, mut st) = private_state();
        st.private = false;
        st.epoch = 0;
        let mut h = History::new();
        let keys = EpochKeys::default();
        for seq in 1..=(MAX_HISTORY as u64 + 10) {
            let c = Content::Text(format!("{seq}")).encode();
            let p = Post::create(&sk(1), id, seq, [0; 32], seq, &c, None, &mut rng).expect("p");
            assert!(h.offer(&id, &st, None, &keys, p.clone(), 0).is_ok());
            assert_eq!(h.offer(&id, &st, None, &keys, p, 0), Ok(None));
        }
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h.iter().next().map(|a| a.post.seq), Some(11));
        // Too large.
        let big = Content::Text("x".repeat(MAX_BODY)).encode();
        assert_eq!(
            Post::create(&sk(1), id, 1, [0; 32], 0, &big, None, &mut rng),
            Err(ChannelError::TooLarge)
        );
        let fits = Content::Text("x".repeat(MAX_PRIVATE_CONTENT - 1)).encode();
        let p = Post::create(
            &sk(1),
            id,
            1,
            [0; 32],
            0,
            &fits,
            Some((1, &[1; 32])),
            &mut rng,
        )
        .expect("fits");
        assert_eq!(p.encode().len(), MAX_VALUE_SIZE);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever mix of members, outsiders, forgeries and duplicates arrives, the history holds
        /// only posts from admins or certified members, each (author, seq) once, at most
        /// MAX_HISTORY of them.
        #[test]
        fn history_admits_only_members(offers in proptest::collection::vec(
            (1u8..=4, 1u64..120, 0u64..1000, any::<bool>()), 0..320)) {
            let mut rng = FerryRng::from_u64(9);
            let (id, st) = private_state();
            let mut keys = EpochKeys::default();
            keys.insert(1, [9; 32]);
            // 1 admin, 2 and 3 certified members, 4 an outsider (no cert).
            let certs: Vec<Option<MemberCert>> = (0..=4u8)
                .map(|n| (n == 2 || n == 3).then(|| MemberCert::issue(&sk(1), id, pk(n), boxkp(n).public, ROLE_MEMBER, 10_000)))
                .collect();
            let mut h = History::new();
            let c = Content::Text("x".into()).encode();
            for (author, seq, sent, forge) in offers {
                let mut p = Post::create(&sk(author), id, seq, [0; 32], sent, &c, Some((1, &[9; 32])), &mut rng).expect("post");
                if forge {
                    p.sent_unix ^= 1;
                }
                let _ = h.offer(&id, &st, certs[usize::from(author)].as_ref(), &keys, p, 5);
            }
            prop_assert!(h.len() <= MAX_HISTORY);
            let mut seen = std::collections::HashSet::new();
            for a in h.iter() {
                prop_assert!(a.post.author == pk(1) || a.post.author == pk(2) || a.post.author == pk(3));
                prop_assert!(seen.insert((a.post.author, a.post.seq)));
                prop_assert_eq!(a.post.verify(&id, &st, certs[2..4].iter().flatten().find(|c| c.member == a.post.author), 5), Ok(()));
            }
        }

    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = ChannelState::decode(&b);
            let _ = Roster::decode(&b);
            let _ = Head::decode(&b);
            let _ = Post::decode(&b);
            let _ = KeyBundle::decode(&b).map(|k| k.open(&SecretKey::from_bytes([2; 32])));
            let _ = JoinRequest::decode_verify(&b, &PublicKey([1; 32]));
            let _ = Content::decode(&b);
        }

        #[test]
        fn post_round_trip(seq in 1u64.., prev in any::<[u8; 32]>(), sent in any::<u64>(),
                           text in ".{0,200}", private in any::<bool>()) {
            let mut rng = FerryRng::from_u64(seq);
            let c = Content::Text(text.clone()).encode();
            let key = [3; 32];
            let p = Post::create(&sk(1), [5; 32], seq, prev, sent, &c,
                                 private.then_some((1, &key)), &mut rng).expect("post");
            let back = Post::decode(&p.encode()).expect("decode");
            prop_assert_eq!(&back, &p);
            let mut keys = EpochKeys::default();
            keys.insert(1, key);
            prop_assert_eq!(Content::decode(&back.open(&keys).expect("open")), Ok(Content::Text(text)));
        }

        #[test]
        fn state_round_trip(private in any::<bool>(), name in "[a-z]{0,48}", na in 1usize..=4,
                            epoch in any::<u32>(), pages in 0u8..=8, nr in 0usize..=12) {
            let st = ChannelState {
                private, name, epoch, roster_pages: pages,
                admins: (0..na).map(|i| Admin { author: [i as u8; 32], box_pk: PublicKey([7; 32]) }).collect(),
                removed: (0..nr).map(|i| Removed { member: [i as u8; 32], max_seq: i as u64 }).collect(),
            };
            let v = st.encode().expect("encode");
            prop_assert!(v.len() <= MAX_VALUE_SIZE);
            prop_assert_eq!(ChannelState::decode(&v), Ok(st));
        }

        #[test]
        fn head_round_trip(seq in any::<u64>(), n in 0usize..=16, cert in any::<bool>()) {
            let h = Head {
                cert: cert.then(|| MemberCert::issue(&sk(1), [1; 32], [2; 32], PublicKey([3; 32]), ROLE_MEMBER, seq)),
                seq,
                posts: (0..n).map(|i| [i as u8; 32]).collect(),
            };
            prop_assert_eq!(Head::decode(&h.encode()), Ok(h));
        }
    }
}
