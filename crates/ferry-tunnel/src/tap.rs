//! TAP mode (issue 7 item 5, seed 000): Ethernet frames between nodes, so two LANs can be
//! bridged at layer 2. Sans-IO: the daemon owns the TAP device; this module decides where a frame
//! goes and whether a received one may be written.
//!
//! # Frames on the wire
//! One Ethernet frame (destination MAC, source MAC, EtherType, payload; no FCS) per net_crypto
//! lossy packet with id [`TAP_PACKET_ID`] = 224: `[0xE0][frame]`, at most
//! [`TAP_FRAME_MAX`] = 1372 bytes, so the TAP device's MTU is [`TAP_MTU`] = 1358 (frame minus the
//! 14-byte header). A TAP packet with no frame (`[0xE0]` alone) is a hello: "I run TAP" (the
//! daemon sends one to each online friend every 5 s and answers a new friend's first; those
//! friends are the flood targets).
//!
//! # Forwarding: a learning bridge over friends, without transit
//! [`TapBridge`] learns which friend each source MAC arrived from (at most
//! [`MAX_MACS`] entries; the least recently seen is evicted, entries older than
//! [`MAC_AGE`] are ignored). A frame read from the TAP device goes to the friend that owns its
//! destination MAC, or, for broadcast, multicast and unknown destinations, to every friend with
//! TAP up (flooding, at most [`MAX_FLOOD`] friends). A frame from a friend is only ever written
//! to the TAP device, never sent on to other friends (split horizon), so ferry nodes cannot form
//! a forwarding loop among themselves; bridging the TAP device into a local bridge is the
//! kernel's business (and its STP's).
//!
//! Received frames are dropped (and counted by reason) when shorter than the header, longer than
//! [`TAP_FRAME_MAX`], or when their source MAC is a group address (no station sends from one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;

/// net_crypto lossy packet id of a TAP frame (custom lossy range 200..=254; 222 is the IP
/// tunnel, 230 circuit data).
pub const TAP_PACKET_ID: u8 = 224;
/// Ethernet header: destination MAC (6), source MAC (6), EtherType (2).
pub const ETHERNET_HEADER_SIZE: usize = 14;
/// Largest frame a lossy packet carries: 1373 net_crypto data bytes − 1 id byte = 1372.
pub const TAP_FRAME_MAX: usize = ferry_wire::net_crypto::MAX_CRYPTO_DATA_SIZE - 1;
/// MTU of the TAP device: [`TAP_FRAME_MAX`] − [`ETHERNET_HEADER_SIZE`] = 1358 bytes.
pub const TAP_MTU: usize = TAP_FRAME_MAX - ETHERNET_HEADER_SIZE;
/// Most learnt MAC addresses (remote input: capped, least recently seen evicted): 4096.
pub const MAX_MACS: usize = 4096;
/// A learnt MAC older than this is treated as unknown (flooded): 300 s, as Linux bridges.
pub const MAC_AGE: Duration = Duration::from_secs(300);
/// Most friends a flooded frame goes to: 64.
pub const MAX_FLOOD: usize = 64;

/// A 6-byte MAC address.
pub type Mac = [u8; 6];

/// The Ethernet header fields the bridge reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// EtherType (or 802.3 length), big-endian on the wire.
    pub ether_type: u16,
}

/// Why a TAP frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TapDrop {
    /// Shorter than 14 bytes or longer than [`TAP_FRAME_MAX`].
    #[error("bad frame length")]
    BadLength,
    /// Source MAC is a group (multicast/broadcast) address.
    #[error("group source address")]
    GroupSource,
    /// Not a TAP frame (empty, or id ≠ [`TAP_PACKET_ID`]).
    #[error("not a TAP frame")]
    NotTap,
    /// No friend to send to (no friend has TAP up, or the owner is offline).
    #[error("no route")]
    NoRoute,
}

impl EthernetHeader {
    /// Parses the first 14 bytes of `frame`.
    ///
    /// # Errors
    /// [`TapDrop::BadLength`] for frames shorter than the header or longer than
    /// [`TAP_FRAME_MAX`].
    pub fn parse(frame: &[u8]) -> Result<Self, TapDrop> {
        if frame.len() < ETHERNET_HEADER_SIZE || frame.len() > TAP_FRAME_MAX {
            return Err(TapDrop::BadLength);
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        src.copy_from_slice(&frame[6..12]);
        Ok(Self {
            dst,
            src,
            ether_type: u16::from_be_bytes([frame[12], frame[13]]),
        })
    }
}

/// Whether `mac` is a group address (I/G bit set: multicast or broadcast).
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

/// `[TAP_PACKET_ID][frame]` into `out` (cleared first).
pub fn encode_tap_frame(frame: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(TAP_PACKET_ID);
    out.extend_from_slice(frame);
}

/// The frame inside a TAP lossy packet.
///
/// # Errors
/// [`TapDrop::NotTap`] when `data` is empty or its id is not [`TAP_PACKET_ID`].
pub fn decode_tap_frame(data: &[u8]) -> Result<&[u8], TapDrop> {
    match data.split_first() {
        Some((&TAP_PACKET_ID, frame)) => Ok(frame),
        _ => Err(TapDrop::NotTap),
    }
}

/// Where a frame read from the TAP device goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapRoute {
    /// To the friend that owns the destination MAC.
    One(PublicKey),
    /// Flooded to these friends (broadcast, multicast, unknown destination).
    Flood(Vec<PublicKey>),
}

#[derive(Clone, Copy, Debug)]
struct Learnt {
    friend: PublicKey,
    seen: Instant,
}

/// The learning bridge (see the module docs).
#[derive(Debug, Default)]
pub struct TapBridge {
    macs: HashMap<Mac, Learnt>,
    /// Frames dropped, by reason: bad length, group source, not TAP, no route.
    pub dropped: [u64; 4],
    /// Learnt MACs evicted because the table held [`MAX_MACS`] (table full).
    pub evicted: u64,
}

impl TapBridge {
    /// An empty bridge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learnt MACs.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// No MAC learnt yet.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    fn count(&mut self, why: TapDrop) {
        let i = match why {
            TapDrop::BadLength => 0,
            TapDrop::GroupSource => 1,
            TapDrop::NotTap => 2,
            TapDrop::NoRoute => 3,
        };
        self.dropped[i] += 1;
    }

    /// A frame read from our TAP device at `now`: where it goes. `peers` are the online friends
    /// with TAP up (flood targets; the first [`MAX_FLOOD`] are used).
    ///
    /// # Errors
    /// [`TapDrop::BadLength`], [`TapDrop::NoRoute`] (nobody to send to); counted.
    pub fn route_outbound(
        &mut self,
        now: Instant,
        frame: &[u8],
        peers: &[PublicKey],
    ) -> Result<TapRoute, TapDrop> {
        let h = match EthernetHeader::parse(frame) {
            Ok(h) => h,
            Err(e) => {
                self.count(e);
                return Err(e);
            }
        };
        if !is_group(&h.dst)
            && let Some(l) = self.macs.get(&h.dst)
            && now.saturating_duration_since(l.seen) < MAC_AGE
            && peers.contains(&l.friend)
        {
            return Ok(TapRoute::One(l.friend));
        }
        if peers.is_empty() {
            self.count(TapDrop::NoRoute);
            return Err(TapDrop::NoRoute);
        }
        Ok(TapRoute::Flood(
            peers.iter().take(MAX_FLOOD).copied().collect(),
        ))
    }

    /// A frame from friend `from` at `now` (the packet's payload after the id byte): checked,
    /// its source MAC learnt; `Ok` means write it to the TAP device.
    ///
    /// # Errors
    /// [`TapDrop::BadLength`], [`TapDrop::GroupSource`]; counted.
    pub fn check_inbound(
        &mut self,
        now: Instant,
        from: PublicKey,
        frame: &[u8],
    ) -> Result<(), TapDrop> {
        let h = match EthernetHeader::parse(frame) {
            Ok(h) => h,
            Err(e) => {
                self.count(e);
                return Err(e);
            }
        };
        if is_group(&h.src) {
            self.count(TapDrop::GroupSource);
            return Err(TapDrop::GroupSource);
        }
        if !self.macs.contains_key(&h.src) && self.macs.len() >= MAX_MACS {
            // Evict the least recently seen.
            if let Some(old) = self
                .macs
                .iter()
                .min_by_key(|(_, l)| l.seen)
                .map(|(m, _)| *m)
            {
                self.macs.remove(&old);
                self.evicted += 1;
            }
        }
        self.macs.insert(
            h.src,
            Learnt {
                friend: from,
                seen: now,
            },
        );
        Ok(())
    }

    /// Forgets every MAC learnt from `friend` (it went offline or turned TAP off).
    pub fn forget(&mut self, friend: &PublicKey) {
        self.macs.retain(|_, l| l.friend != *friend);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    }

    #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn learns_unicast_and_floods_the_rest() {
        let now = t0();
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let peers = [a, b];
        let mut br = TapBridge::new();
        let mac_x = [0x02, 0, 0, 0, 0, 1];
        let mac_y = [0x02, 0, 0, 0, 0, 2];
        // ARP request (broadcast) floods.
        let arp = frame([0xff; 6], mac_x);
        assert_eq!(
            br.route_outbound(now, &arp, &peers),
            Ok(TapRoute::Flood(vec![a, b]))
        );
        // The reply from friend b teaches y → b; unicast to y then goes to b only.
        assert_eq!(br.check_inbound(now, b, &frame(mac_x, mac_y)), Ok(()));
        assert_eq!(
            br.route_outbound(now, &frame(mac_y, mac_x), &peers),
            Ok(TapRoute::One(b))
        );
        // Aged out, or b offline: flooded again / to whoever is left.
        assert!(matches!(
            br.route_outbound(now + MAC_AGE, &frame(mac_y, mac_x), &peers),
            Ok(TapRoute::Flood(_))
        ));
        assert_eq!(
            br.route_outbound(now, &frame(mac_y, mac_x), &[a]),
            Ok(TapRoute::Flood(vec![a]))
        );
        br.forget(&b);
        assert!(br.is_empty());
    }

    #[test]
    fn bad_frames_are_dropped_and_counted() {
        let now = t0();
        let a = PublicKey([1; 32]);
        let mut br = TapBridge::new();
        assert_eq!(br.check_inbound(now, a, &[0; 13]), Err(TapDrop::BadLength));
        assert_eq!(
            br.check_inbound(now, a, &vec![0; TAP_FRAME_MAX + 1]),
            Err(TapDrop::BadLength)
        );
        assert_eq!(
            br.check_inbound(now, a, &frame([2; 6], [0x01, 0, 0x5e, 0, 0, 1])),
            Err(TapDrop::GroupSource)
        );
        assert_eq!(
            br.route_outbound(now, &frame([0xff; 6], [2; 6]), &[]),
            Err(TapDrop::NoRoute)
        );
        assert_eq!(br.dropped, [2, 1, 0, 1]);
        assert_eq!(decode_tap_frame(&[222, 1]), Err(TapDrop::NotTap));
        assert_eq!(decode_tap_frame(&[]), Err(TapDrop::NotTap));
        let mut out = Vec::new();
        encode_tap_frame(&[1, 2, 3], &mut out);
        assert_eq!(decode_tap_frame(&out), Ok(&[1u8, 2, 3][..]));
        assert_eq!(TAP_MTU, 1358);
    }

    #[test]
    fn mac_table_is_capped() {
        let now = t0();
        let a = PublicKey([1; 32]);
        let mut br = TapBridge::new();
        for i in 0..(MAX_MACS as u32 + 10) {
            let b = i.to_be_bytes();
            let src = [0x02, 0, b[0], b[1], b[2], b[3]];
            let t = now + Duration::from_millis(u64::from(i));
            assert_eq!(br.check_inbound(t, a, &frame([2; 6], src)), Ok(()));
        }
        assert_eq!(br.len(), MAX_MACS);
        assert_eq!(br.evicted, 10);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let now = t0();
            let mut br = TapBridge::new();
            let k = PublicKey([3; 32]);
            let _ = br.check_inbound(now, k, &data);
            let _ = br.route_outbound(now, &data, &[k]);
            let _ = decode_tap_frame(&data);
        }
    }
}
