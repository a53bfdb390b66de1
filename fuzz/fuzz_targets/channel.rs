//! Channel objects (ferry-data `channel`): decoders never panic, and what decodes re-encodes to
//! the same bytes; decoded posts go through verification and opening.
#![no_main]
use ferry_crypto::{PublicKey, SecretKey};
use ferry_data::channel::{
    Admin, ChannelState, Content, EpochKeys, Head, JoinRequest, KeyBundle, Post, Roster,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = ChannelState::decode(data) {
        assert_eq!(s.encode().expect("decoded state encodes"), data);
    }
    if let Ok(r) = Roster::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(h) = Head::decode(data) {
        assert_eq!(h.encode(), data);
    }
    if let Ok(b) = KeyBundle::decode(data) {
        assert_eq!(b.encode(), data);
        let _ = b.open(&SecretKey::from_bytes([2; 32]));
    }
    if let Ok(p) = Post::decode(data) {
        assert_eq!(p.encode(), data);
        let st = ChannelState {
            private: p.epoch != 0,
            name: String::new(),
            admins: vec![Admin {
                author: p.author,
                box_pk: PublicKey([1; 32]),
            }],
            epoch: p.epoch,
            roster_pages: 0,
            removed: vec![],
        };
        let _ = p.verify(&p.channel, &st, None, 0);
        let mut keys = EpochKeys::default();
        keys.insert(p.epoch, [3; 32]);
        let _ = p.open(&keys);
    }
    let _ = JoinRequest::decode_verify(data, &PublicKey([1; 32]));
    let _ = Content::decode(data);
});
