//! ferry's data layer on the DHT (issue 9; `data-layer.md` §3.1–§3.3), sans-IO.
//!
//! * [`item`]: the stored item classes and their BEP 44 rules (immutable, mutable, claimed, mail).
//! * [`wire`]: the value-store packets 0xe0–0xe4 (encrypted like DHT requests).
//! * [`store`]: what a node holds for others: quotas, write tokens, expiry, snapshot/restore.
//! * [`lookup`]: the Kademlia iterative get/put driver over capable nodes (k = 8, α = 3).
//! * [`name`]: usernames (record hides the name; first claim wins; proof of work).
//! * [`mailbox`]: offline messages (mailbox addresses, sealed envelopes, per-sender order).
//! * [`channel`]: channels (issue 10): signed state, membership certificates, signed posts,
//!   epoch-key encryption for private channels, bounded history.
//! * [`site`]: broadcast sites (a name's signed, sealed head naming a content id).
//! * [`host`]: what a DHT node adds to host all this: [`host::StoreHost`] (datagram path) and
//!   [`host::CapableNodes`] (peers known to speak the extension).
//!
//! Nothing here does I/O: `now` is passed in, randomness comes from an injected
//! [`ferry_crypto::rng::FerryRng`]. A host (the DHT node, the simulator) routes datagrams whose
//! first byte is 0xe0–0xe4 ([`wire::StoreEnvelope::is_store_kind`]) here.
//!
//! # Hosting (the next step: wiring into `ferry_proto::dht::Dht` and the simulator)
//!
//! 1. Datagrams 0xe0–0xe4 → [`host::StoreHost::handle_datagram`]; send its `reply` to the
//!    sender; feed response messages to the [`lookup::Lookup`]s by request id.
//! 2. Each newly seen DHT node gets a [`host::probe`] hello; answering peers enter
//!    [`host::CapableNodes`], whose [`host::CapableNodes::closest`] seeds lookups.
//! 3. Once a second: [`store::Store::handle_timeout`], [`lookup::Lookup::handle_timeout`],
//!    [`host::CapableNodes::expire`]; every few minutes [`store::Store::due_republish`] → a put
//!    lookup per item (holder republish, 30 min); owners re-put every
//!    [`item::OWNER_REPUBLISH_INTERVAL`] (names every [`name::NAME_RENEW_INTERVAL`]).
//! 4. On shutdown / periodically: [`store::Store::snapshot`] to disk; on start
//!    [`store::Store::restore`].

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod channel;
pub mod host;
pub mod item;
pub mod lookup;
pub mod mailbox;
pub mod name;
pub mod site;
pub mod store;
pub mod wire;

/// Golden vectors: pin every derivation and the signed-message layout, so a change that would
/// split the network (other targets, other signatures) fails here first (`data-layer.md` §4.4).
#[cfg(test)]
mod golden {
    use crate::item::{MutableItem, Target};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn vectors() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let m = MutableItem::sign(&k, b"salt", 7, b"hello");
        assert_eq!(
            hex(&Target::immutable(b"abc").0),
            "92d50405be9b9777d27def259a4375cf8018de4cba8c89467b678b7bf8f5e7f5"
        );
        assert_eq!(
            hex(&m.target().0),
            "16fbd85c81366efcaaac16f3580e51f28bda6c81489b08e3c2b4af27554a387c"
        );
        assert_eq!(
            hex(&m.sig),
            "995d04f4efa7ef12b888a308927255b3bb808ef639d0991e41d00f1ed4c61930\
             8a90ebebc2ab5f3de11e2356cada5d0463104aafd3e9e0e45e3c169b90aec704"
        );
        assert_eq!(
            hex(&crate::name::name_id("alice")),
            "02b201089f0ff96750996832ad9c2bc6d6c51e113f4752d90bdcc1240b7e4bef"
        );
        let freq =
            crate::mailbox::request_mailbox(&ferry_crypto::PublicKey([2; 32]), [1, 2, 3, 4], 100);
        assert_eq!(
            hex(&freq.0),
            "fcfa3aea0e31d6372fa0c1d50cc3c3908d673ca6434310f9d7344f07b3f905c2"
        );
    }
}
