//! Messenger file packets (FILE_SENDREQUEST 0x50, FILE_CONTROL 0x51, FILE_DATA 0x52): bytes in,
//! never a panic; what parses re-encodes byte-exactly (the layouts are canonical) and parses
//! to the same packet.
#![no_main]
use ferry_wire::messenger::{FileControl, FileSendRequest, MessengerPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(r) = FileSendRequest::decode(body) {
                let mut out = Vec::new();
                r.encode_into(&mut out);
                assert_eq!(out, body);
            }
        }
        1 => {
            if let Ok(c) = FileControl::decode(body) {
                let mut out = Vec::new();
                c.encode_into(&mut out);
                assert_eq!(out, body);
            }
        }
        _ => {
            let mut p = vec![0x52];
            p.extend_from_slice(body);
            if let Ok(m) = MessengerPacket::decode(&p) {
                assert_eq!(m.encode(), p);
            }
        }
    }
});
