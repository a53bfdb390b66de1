//! Offline messages: mailbox addresses, sealed envelopes, per-sender order (`data-layer.md` §3.3).
//!
//! # Mailbox addresses (rotate every [`EPOCH`] = 1 day)
//!
//! | mailbox | target |
//! |---|---|
//! | friend requests | `BLAKE3-derive("eddt v1 freq", recipient long-term pk ‖ nospam 4 ‖ epoch u64 BE)` |
//! | friend messages | `BLAKE3-derive("eddt v1 mbox", prf ‖ recipient long-term pk ‖ epoch u64 BE)` |
//!
//! Only someone who knows the Tox ID (long-term key *and* nospam) can address a request mailbox;
//! changing the nospam orphans spam. The friend mailbox uses `prf` = the 48-byte `crypto_box`
//! (sender sk, recipient pk, nonce = `derive("eddt v1 mbox nonce", epoch)[..24]`) of 32 zero
//! bytes: only the two friends can compute it, so holders cannot link it to the recipient. The
//! recipient polls the last [`POLL_EPOCHS`] (7) days of each.
//!
//! # Envelope ([`MailEnvelope`])
//!
//! `sealed = [ephemeral pk 32][nonce 24][crypto_box(ephemeral sk, recipient pk)(plaintext)]`,
//! plaintext padded with zeros to 256 or 1024 bytes ([`BUCKETS`]):
//!
//! | bytes | field |
//! |---|---|
//! | 32 | sender's long-term public key |
//! | 8 | per-sender sequence number (from 1; order and dedup) |
//! | 8 | sent at (Unix seconds) |
//! | 32 | delete secret `d` (`delete_hash = derive("eddt v1 mail delete", d)` is public) |
//! | 32 | sender tag: `BLAKE3-keyed(k, seq ‖ sent ‖ d ‖ body)`, `k` = bytes 16..48 of `crypto_box`(sender sk, recipient pk, nonce = `derive("eddt v1 mail auth", d)[..24]`) of 32 zero bytes |
//! | 2 | body length |
//! | n ≤ 910 | body |
//!
//! The ephemeral key hides the sender from holders; the tag proves the sender to the recipient
//! (only the two long-term keys yield `k`). Deletion after fetch reveals `d` ([`Item::MailDelete`]):
//! holders check it against `delete_hash` without learning who the recipient is (a signature by
//! the recipient would tell holders which key owns the mailbox).

use std::collections::HashMap;
use std::time::Duration;

use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_crypto::{
    KEY_SIZE, KeyPair, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey, SecretKey,
};

use crate::item::{Item, MAX_MAIL_TTL, MailEnvelope, Target, delete_hash};

/// Mailbox rotation period (1 day), in seconds of Unix time.
pub const EPOCH: Duration = Duration::from_secs(86_400);
/// Epochs a recipient polls: today and the 6 before (7 days = [`MAX_MAIL_TTL`]).
pub const POLL_EPOCHS: u64 = MAX_MAIL_TTL.as_secs() / EPOCH.as_secs();
/// Plaintext padding buckets, in bytes (`data-layer.md` §3.3).
pub const BUCKETS: [usize; 2] = [256, 1024];
/// Plaintext bytes before the body: 32 + 8 + 8 + 32 + 32 + 2.
pub const HEADER_SIZE: usize = 114;
/// Longest body, in bytes (1024 − 114).
pub const MAX_BODY: usize = 1024 - HEADER_SIZE;

/// Why a mailbox operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// Body longer than [`MAX_BODY`].
    #[error("message too long")]
    TooLong,
    /// Not for us, tampered, or malformed.
    #[error("envelope does not open")]
    Open,
    /// The sender tag does not verify: the claimed sender did not write it.
    #[error("sender not authenticated")]
    Sender,
}

/// The epoch of a Unix time.
pub fn epoch_of(unix_s: u64) -> u64 {
    unix_s / EPOCH.as_secs()
}

/// The friend-request mailbox of a Tox ID's key and nospam in `epoch`.
pub fn request_mailbox(recipient: &PublicKey, nospam: [u8; 4], epoch: u64) -> Target {
    let mut h = blake3::Hasher::new_derive_key("eddt v1 freq");
    h.update(recipient.as_bytes());
    h.update(&nospam);
    h.update(&epoch.to_be_bytes());
    Target(*h.finalize().as_bytes())
}

fn prf(key: &PrecomputedKey, context: &str, input: &[u8]) -> [u8; 48] {
    let n = blake3::derive_key(context, input);
    let mut nonce = [0; NONCE_SIZE];
    nonce.copy_from_slice(&n[..NONCE_SIZE]);
    let out = key
        .encrypt(&Nonce(nonce), &[0; 32])
        .expect("crypto_box of 32 bytes cannot fail");
    let mut r = [0; 48];
    r.copy_from_slice(&out[..48]);
    r
}

/// The mailbox where `sender` leaves messages for `recipient` in `epoch`. Both sides compute it:
/// the sender with (its sk, recipient pk), the recipient with (its sk, sender pk).
pub fn friend_mailbox(
    our_secret: &SecretKey,
    their_pk: &PublicKey,
    recipient: &PublicKey,
    epoch: u64,
) -> Target {
    let key = PrecomputedKey::new(our_secret, their_pk);
    let p = prf(&key, "eddt v1 mbox nonce", &epoch.to_be_bytes());
    let mut h = blake3::Hasher::new_derive_key("eddt v1 mbox");
    h.update(&p);
    h.update(recipient.as_bytes());
    h.update(&epoch.to_be_bytes());
    Target(*h.finalize().as_bytes())
}

/// The epochs to poll at `now_unix`, newest first.
pub fn poll_epochs(now_unix: u64) -> impl Iterator<Item = u64> {
    let e = epoch_of(now_unix);
    (0..POLL_EPOCHS).filter_map(move |i| e.checked_sub(i))
}

/// An opened offline message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailMessage {
    /// Sender's long-term key (authenticated by the tag).
    pub sender: PublicKey,
    /// Per-sender sequence number, from 1.
    pub seq: u64,
    /// Sent at (Unix seconds).
    pub sent_unix: u64,
    /// Delete secret: reveal as [`Item::MailDelete`] after fetching.
    pub delete_secret: [u8; 32],
    /// The message (≤ [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

impl MailMessage {
    /// The put that deletes this message at every holder of `mailbox`.
    pub fn delete_item(&self) -> Item {
        Item::MailDelete(self.delete_secret)
    }
}

fn tag(key: &PrecomputedKey, seq: u64, sent: u64, d: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let p = prf(key, "eddt v1 mail auth", d);
    let mut k = [0; 32];
    k.copy_from_slice(&p[16..48]);
    let mut h = blake3::Hasher::new_keyed(&k);
    h.update(&seq.to_be_bytes());
    h.update(&sent.to_be_bytes());
    h.update(d);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Seals a message from `sender` (long-term key pair) to `recipient` for the mailbox `target`,
/// with `pow_bits` of hashcash (the storers' [`crate::store::StoreConfig::mail_pow_bits`]). A
/// fresh ephemeral key, nonce and delete secret come from `rng`.
///
/// # Errors
/// [`MailError::TooLong`].
#[allow(clippy::too_many_arguments)]
pub fn seal(
    sender: &KeyPair,
    recipient: &PublicKey,
    target: &Target,
    pow_bits: u32,
    seq: u64,
    sent_unix: u64,
    body: &[u8],
    rng: &mut FerryRng,
) -> Result<(MailEnvelope, MailMessage), MailError> {
    if body.len() > MAX_BODY {
        return Err(MailError::TooLong);
    }
    let mut d = [0; 32];
    rng.fill_bytes(&mut d);
    let t = tag(
        &PrecomputedKey::new(&sender.secret, recipient),
        seq,
        sent_unix,
        &d,
        body,
    );
    let len = HEADER_SIZE + body.len();
    let bucket = BUCKETS.iter().copied().find(|b| *b >= len).unwrap_or(1024);
    let mut plain = Vec::with_capacity(bucket);
    plain.extend_from_slice(sender.public.as_bytes());
    plain.extend_from_slice(&seq.to_be_bytes());
    plain.extend_from_slice(&sent_unix.to_be_bytes());
    plain.extend_from_slice(&d);
    plain.extend_from_slice(&t);
    plain.extend_from_slice(&(body.len() as u16).to_be_bytes());
    plain.extend_from_slice(body);
    plain.resize(bucket, 0);
    let eph = KeyPair::generate(rng);
    let nonce = Nonce::random(rng);
    let ct = PrecomputedKey::new(&eph.secret, recipient)
        .encrypt(&nonce, &plain)
        .expect("crypto_box of ≤ 1024 bytes cannot fail");
    let mut sealed = Vec::with_capacity(KEY_SIZE + NONCE_SIZE + ct.len());
    sealed.extend_from_slice(eph.public.as_bytes());
    sealed.extend_from_slice(&nonce.0);
    sealed.extend_from_slice(&ct);
    let msg = MailMessage {
        sender: sender.public,
        seq,
        sent_unix,
        delete_secret: d,
        body: body.to_vec(),
    };
    let mut env = MailEnvelope {
        delete_hash: delete_hash(&d),
        pow: 0,
        sealed,
    };
    env.solve_pow(target, pow_bits);
    Ok((env, msg))
}

/// Opens an envelope with the recipient's long-term secret key; checks padding, the sender tag
/// and that `delete_hash` matches the `d` inside (a holder cannot swap it).
///
/// # Errors
/// [`MailError::Open`], [`MailError::Sender`].
pub fn open(recipient: &SecretKey, env: &MailEnvelope) -> Result<MailMessage, MailError> {
    let s = &env.sealed;
    if s.len() < KEY_SIZE + NONCE_SIZE + MAC_SIZE {
        return Err(MailError::Open);
    }
    let eph = PublicKey::from_slice(&s[..KEY_SIZE]).ok_or(MailError::Open)?;
    let nonce = Nonce(
        s[KEY_SIZE..KEY_SIZE + NONCE_SIZE]
            .try_into()
            .map_err(|_| MailError::Open)?,
    );
    let plain = PrecomputedKey::new(recipient, &eph)
        .decrypt(&nonce, &s[KEY_SIZE + NONCE_SIZE..])
        .map_err(|_| MailError::Open)?;
    if !BUCKETS.contains(&plain.len()) {
        return Err(MailError::Open);
    }
    let arr32 = |at: usize| -> Result<[u8; 32], MailError> {
        plain[at..at + 32].try_into().map_err(|_| MailError::Open)
    };
    let u64_at = |at: usize| -> Result<u64, MailError> {
        Ok(u64::from_be_bytes(
            plain[at..at + 8].try_into().map_err(|_| MailError::Open)?,
        ))
    };
    let sender = PublicKey(arr32(0)?);
    let seq = u64_at(32)?;
    let sent_unix = u64_at(40)?;
    let d = arr32(48)?;
    let t = arr32(80)?;
    let len = usize::from(u16::from_be_bytes([plain[112], plain[113]]));
    if HEADER_SIZE + len > plain.len() || plain[HEADER_SIZE + len..].iter().any(|b| *b != 0) {
        return Err(MailError::Open);
    }
    if delete_hash(&d) != env.delete_hash {
        return Err(MailError::Open);
    }
    let body = plain[HEADER_SIZE..HEADER_SIZE + len].to_vec();
    let expect = tag(
        &PrecomputedKey::new(recipient, &sender),
        seq,
        sent_unix,
        &d,
        &body,
    );
    if !ferry_crypto::ct_eq(&expect, &t) {
        return Err(MailError::Sender);
    }
    Ok(MailMessage {
        sender,
        seq,
        sent_unix,
        delete_secret: d,
        body,
    })
}

/// Most senders an [`Inbox`] remembers (least recently delivered forgotten first).
pub const MAX_INBOX_SENDERS: usize = 4096;

/// The recipient's delivery state: the highest sequence delivered per sender. Messages are
/// delivered in sequence order per sender; anything at or below the high-water mark (a
/// duplicate from another holder, a replay) is dropped. Gaps are not waited for (a lost message
/// does not block later ones; the sender resends until a delivery receipt).
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    delivered: HashMap<PublicKey, (u64, u64)>,
    clock: u64,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest sequence delivered from `sender` (0 = none).
    pub fn delivered(&self, sender: &PublicKey) -> u64 {
        self.delivered.get(sender).map_or(0, |e| e.0)
    }

    /// Takes a batch of opened messages (any order, any duplicates, from any holders) and returns
    /// those to deliver: new ones, deduplicated, ordered by (sender, seq).
    pub fn accept(&mut self, mut batch: Vec<MailMessage>) -> Vec<MailMessage> {
        batch.sort_by_key(|a| (a.sender, a.seq));
        batch.dedup_by(|a, b| a.sender == b.sender && a.seq == b.seq);
        let mut out = Vec::new();
        for m in batch {
            if m.seq > self.delivered(&m.sender) {
                self.clock += 1;
                if !self.delivered.contains_key(&m.sender)
                    && self.delivered.len() >= MAX_INBOX_SENDERS
                    && let Some(old) = self
                        .delivered
                        .iter()
                        .min_by_key(|(_, e)| e.1)
                        .map(|(k, _)| *k)
                {
                    self.delivered.remove(&old);
                }
                self.delivered.insert(m.sender, (m.seq, self.clock));
                out.push(m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kp(n: u8) -> KeyPair {
        KeyPair::from_secret(SecretKey::from_bytes([n; 32]))
    }

    #[test]
    fn addresses() {
        let (a, b) = (kp(1), kp(2));
        // Both friends compute the same mailbox for messages to b; direction matters.
        let ab = friend_mailbox(&a.secret, &b.public, &b.public, 100);
        assert_eq!(ab, friend_mailbox(&b.secret, &a.public, &b.public, 100));
        assert_ne!(ab, friend_mailbox(&a.secret, &b.public, &a.public, 100));
        assert_ne!(ab, friend_mailbox(&a.secret, &b.public, &b.public, 101));
        // A third party with only b's key gets another address.
        let c = kp(3);
        assert_ne!(ab, friend_mailbox(&c.secret, &b.public, &b.public, 100));
        // Request mailbox needs the nospam.
        assert_ne!(
            request_mailbox(&b.public, [1, 2, 3, 4], 5),
            request_mailbox(&b.public, [1, 2, 3, 5], 5)
        );
        assert_eq!(
            poll_epochs(86_400 * 10).collect::<Vec<_>>(),
            vec![10, 9, 8, 7, 6, 5, 4]
        );
        assert_eq!(poll_epochs(0).count(), 1);
    }

    #[test]
    fn seal_open_and_tamper() {
        let mut rng = FerryRng::from_u64(5);
        let (a, b, c) = (kp(1), kp(2), kp(3));
        let (env, msg) = seal(
            &a,
            &b.public,
            &Target([1; 32]),
            4,
            1,
            1000,
            b"hi bob",
            &mut rng,
        )
        .expect("seal");
        assert_eq!(env.sealed.len(), 32 + 24 + 16 + 256);
        assert_eq!(open(&b.secret, &env), Ok(msg.clone()));
        assert_eq!(open(&c.secret, &env), Err(MailError::Open));
        let mut t = env.clone();
        t.sealed[100] ^= 1;
        assert_eq!(open(&b.secret, &t), Err(MailError::Open));
        let mut t = env.clone();
        t.delete_hash[0] ^= 1;
        assert_eq!(open(&b.secret, &t), Err(MailError::Open));
        assert_eq!(msg.delete_item(), Item::MailDelete(msg.delete_secret));
        let (big, _) = seal(
            &a,
            &b.public,
            &Target([1; 32]),
            4,
            2,
            0,
            &[7; MAX_BODY],
            &mut rng,
        )
        .expect("max");
        assert_eq!(big.sealed.len(), crate::item::MAX_SEALED_MAIL_SIZE);
        assert_eq!(
            seal(
                &a,
                &b.public,
                &Target([1; 32]),
                4,
                2,
                0,
                &[7; MAX_BODY + 1],
                &mut rng
            )
            .map(|_| ()),
            Err(MailError::TooLong)
        );
    }

    #[test]
    fn forged_sender_is_refused() {
        // c seals a message claiming to be a: the tag (keyed by a↔b) cannot match.
        let mut rng = FerryRng::from_u64(6);
        let (a, b, c) = (kp(1), kp(2), kp(3));
        let forger = KeyPair {
            public: a.public,
            secret: c.secret.clone(),
        };
        let (env, _) = seal(
            &forger,
            &b.public,
            &Target([1; 32]),
            4,
            1,
            0,
            b"it's a",
            &mut rng,
        )
        .expect("seal");
        assert_eq!(open(&b.secret, &env), Err(MailError::Sender));
    }

    fn m(sender: u8, seq: u64) -> MailMessage {
        MailMessage {
            sender: PublicKey([sender; 32]),
            seq,
            sent_unix: 0,
            delete_secret: [0; 32],
            body: vec![],
        }
    }

    #[test]
    fn inbox_orders_and_dedups() {
        let mut inbox = Inbox::new();
        let out = inbox.accept(vec![m(1, 3), m(2, 1), m(1, 1), m(1, 3), m(1, 2)]);
        let got: Vec<_> = out.iter().map(|x| (x.sender.0[0], x.seq)).collect();
        assert_eq!(got, vec![(1, 1), (1, 2), (1, 3), (2, 1)]);
        // Second fetch from another holder: all duplicates.
        assert!(inbox.accept(vec![m(1, 2), m(2, 1)]).is_empty());
        assert_eq!(inbox.accept(vec![m(1, 4)]).len(), 1);
    }

    proptest! {
        /// Whatever the arrival order and duplication, each (sender, seq) is delivered at most
        /// once and per-sender delivery order is increasing.
        #[test]
        fn inbox_exactly_once_in_order(batches in proptest::collection::vec(proptest::collection::vec((0u8..4, 1u64..20), 0..20), 1..6)) {
            let mut inbox = Inbox::new();
            let mut seen = std::collections::HashSet::new();
            let mut last: HashMap<u8, u64> = HashMap::new();
            for b in batches {
                for x in inbox.accept(b.into_iter().map(|(s, q)| m(s, q)).collect()) {
                    prop_assert!(seen.insert((x.sender.0[0], x.seq)));
                    let l = last.entry(x.sender.0[0]).or_default();
                    prop_assert!(x.seq > *l);
                    *l = x.seq;
                }
            }
        }

        #[test]
        fn open_never_panics(sealed in proptest::collection::vec(any::<u8>(), 0..1200), h in any::<[u8; 32]>()) {
            let _ = open(&SecretKey::from_bytes([2; 32]), &MailEnvelope { delete_hash: h, pow: 0, sealed });
        }
    }
}
