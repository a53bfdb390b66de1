//! Congestion control of net_crypto's lossless path: a model-based controller after BBR v1
//! (N. Cardwell, Y. Cheng, C. S. Gunn, S. H. Yeganeh, V. Jacobson, "BBR: Congestion-Based
//! Congestion Control", ACM Queue 14(5), 2016; draft-cardwell-iccrg-bbr-congestion-control-00),
//! simplified to the signals net_crypto's wire format already carries and written from the
//! paper's description (no code copied).
//!
//! # Signals (all from c-toxcore-compatible packets, `tox-protocol.md` §5.2)
//!
//! * **Delivered packets**: the peer's `buffer_start` (cumulative ACK in every data packet) and
//!   the numbers a packet request steps over (selective ACK) free send-buffer slots; each freed
//!   slot is one delivered packet ([`Bbr::on_delivered`]).
//! * **RTT**: time from a packet's only send to the ACK that freed it (Karn: retransmitted packets
//!   give no sample). `srtt`/`rttvar` as in RFC 6298; `min_rtt` is the smallest sample of the
//!   last 10 s.
//! * **Loss**: a packet request naming a packet we sent before a packet the peer already has
//!   (RACK-style, RFC 8985), or, when nothing sent after it is known received yet (a lost
//!   tail), naming one older than the retransmission timeout ([`Bbr::rto`]). Loss alone does not lower the rate (random loss of a few percent on a
//!   wireless or netem path is not congestion); a round with more than 20 % loss does.
//!
//! # Model and control
//!
//! * **Delivery rate** per packet as in BBR: a packet records the delivered count and the time of
//!   the last delivery (and the send time of the packet delivered then) when it is sent; when it
//!   is known received, `(delivered now − delivered then) / max(ACK interval, send interval)` is
//!   a sample. Packets credited in a burst (the cumulative ACK
//!   jumping past a filled hole) thus count over the whole interval, not as a spike.
//! * Time is cut into **rounds** of `max(srtt, 4 ms)`; a round's sample is its highest
//!   per-packet sample. A round in which no ACK arrived lasts until one does (at most 1 s): a
//!   c-toxcore peer reads its socket once per `tox_iterate` (50 ms) and ACKs in bursts, and
//!   counting the silent rounds between as zero-rate samples collapsed the estimate to the
//!   floor (measured: a 4 MiB ferry→c-toxcore transfer crawling at 8 KB/s). The **bottleneck bandwidth** `btl_bw` is the maximum of the last 10
//!   round samples. Samples taken while the sender had nothing to send
//!   (app-limited) only count when they raise the estimate.
//! * **Pacing rate** `= pacing_gain × btl_bw`, enforced with a token bucket holding at most
//!   `32 + 2 ms` of packets (the driver's timer granularity is about 1 ms).
//! * **Congestion window** (packets in flight)
//!   `= cwnd_gain × btl_bw × (min_rtt + 2 ms) + 64 + extra_acked` (the 2 ms cover the peer's
//!   delayed ACK and timer slack). `extra_acked` is BBR's ACK-aggregation allowance: the most
//!   packets any ACK epoch delivered beyond `btl_bw × epoch length` over the last 10 rounds
//!   (capped at the window), so a peer that ACKs in bursts is not left idle between them
//!   (ferry→c-toxcore loopback went from ~2 to 5–9 MiB/s in a debug build).
//! * **States**: *Startup* (pacing and cwnd gain 2.89 = 2/ln 2, doubling the delivery rate every
//!   round) until `btl_bw` grew by less than 25 % for 3 rounds (app-limited rounds do not count,
//!   unless they show a standing queue) or a round loses more than 2 % of its packets (BBR v2);
//!   *Drain* (gain 1/2.89) for one round; then *ProbeBw*, cycling pacing gains 1.25, 0.75, 1, 1,
//!   1, 1, 1, 1 (one round each) with cwnd gain 2, except that a round with a standing queue
//!   makes the next one a 0.75 drain round (a delay guard in the spirit of BBR v2).
//! * **Standing queue**: the round's *smallest* RTT sample exceeds `2 × min_rtt + 5 ms`. A queue
//!   delays every packet; a peer that ACKs late (c-toxcore, once per `tox_iterate`) delays only
//!   some, which srtt cannot tell apart. (Measured on loopback, `bench/throughput.sh`: before, a
//!   bulk sender stayed in Startup, kept ~7,000 packets in flight, overflowed the receiver's
//!   socket buffer and a chat message behind them took p50 17–25 ms, max 85–320 ms; after, no
//!   retransmissions, chat p50 6–10 ms, max 27–46 ms, at the same throughput.)
//! * **Overrun**: a round that loses packets while queueing means the queue overflowed (on
//!   loopback, the receiver's socket buffer); for the next [`BW_WINDOW`] rounds the
//!   ACK-aggregation allowance is capped at the base window. Queueing alone does not cap it: a
//!   c-toxcore receiver ACKs late enough that every round looks queued, and capping on queueing
//!   alone (session 10) cut ferry→c-toxcore from 37–60 to 12–23 MiB/s (bench/RESULTS.md,
//!   session 11).
//! * **Heavy loss** (more than 20 % of a round's packets, at least 16): every bandwidth sample
//!   is scaled by 0.7 and Startup ends; this keeps an overflowing bottleneck from collapsing.
//!
//! Differences from BBR v1: no ProbeRTT state (net_crypto sessions rarely run bulk for 10 s with a
//! standing queue, and min_rtt expiry re-measures from normal traffic); rounds are time-based
//! instead of packet-delivery-based; the heavy-loss rule is from BBR v2's spirit. The wire format
//! does not depend on any of it: c-toxcore peers see ordinary data packets and packet requests.

use std::time::{Duration, Instant};

/// Bandwidth samples in the max filter (rounds).
const BW_WINDOW: usize = 10;
/// Startup / drain gain 2/ln 2.
const HIGH_GAIN: f64 = 2.885;
/// ProbeBw pacing gain cycle.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Smallest congestion window, packets.
pub(super) const MIN_CWND: f64 = 64.0;
/// Allowance for the peer's delayed ACK and timer slack in the window.
const ACK_ALLOWANCE: Duration = Duration::from_millis(2);
/// Smallest round.
const MIN_ROUND: Duration = Duration::from_millis(4);
/// A round in which no ACK arrived ends only after this long (it carries no bandwidth sample
/// until then; a peer that reads its socket once per `tox_iterate`, every 50 ms, ACKs in
/// bursts).
const MAX_SILENT_ROUND: Duration = Duration::from_secs(1);
/// An ACK aggregation epoch restarts after this many packets even if ACKs keep coming faster
/// than `btl_bw` (bounds an epoch that started long ago).
const ACK_EPOCH_RESET: u64 = 1 << 20;
/// min_rtt expires after this long.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Lowest bottleneck-bandwidth estimate, packets/s (about 11 KiB/s of 1373-byte packets): low
/// enough that a slow path, such as a TCP relay's 32 KiB/s link limit, is paced near its rate
/// instead of being flooded (a floor of 640 packets/s sent ~22× what such a relay forwards).
const MIN_BTL_BW: f64 = 8.0;
/// Bandwidth estimate before any sample, packets/s (about 2.7 MB/s of 1373-byte packets).
const INITIAL_BW: f64 = 2000.0;

/// What a packet remembers of the controller when it is sent: packets delivered so far and when
/// the last of them was (BBR's per-packet delivery-rate sampling).
#[derive(Clone, Copy, Debug)]
pub(super) struct SendState {
    delivered: u64,
    delivered_time: Instant,
    /// When the most recently delivered packet had been sent.
    first_sent: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw(usize),
}

/// The controller state of one session.
#[derive(Debug)]
pub(super) struct Bbr {
    pub(super) srtt: Option<Duration>,
    rttvar: Duration,
    pub(super) min_rtt: Option<Duration>,
    min_rtt_at: Instant,
    samples: [f64; BW_WINDOW],
    next_sample: usize,
    btl_bw: f64,
    delivered: u64,
    /// Deliveries of the ACK being processed, not yet in `delivered`.
    pending_delivered: u64,
    delivered_time: Instant,
    /// When the most recently delivered packet had been sent.
    first_sent: Instant,
    /// Highest per-packet delivery-rate sample of the current round, packets/s.
    round_max_rate: f64,
    lost: u64,
    round_start: Instant,
    round_delivered: u64,
    round_lost: u64,
    round_app_limited: bool,
    mode: Mode,
    /// The last round's smallest RTT sample was above `2 × min_rtt + 5 ms`: a standing queue.
    queueing: bool,
    /// Rounds left during which the ACK-aggregation allowance stays capped at the base window:
    /// [`BW_WINDOW`] after a round that lost packets with a standing queue (the queue overflowed).
    overrun_rounds: u32,
    /// Smallest RTT sample of the current round.
    round_min_rtt: Option<Duration>,
    full_bw: f64,
    full_bw_rounds: u32,
    tokens: f64,
    last_refill: Instant,
    /// An ACK delivered packets (or a request reported losses) in the current round.
    round_acked: bool,
    /// Start of the current ACK aggregation epoch: the ACKs since came in faster than
    /// `btl_bw` (BBR's `ack_epoch`).
    ack_epoch_start: Instant,
    /// Packets delivered in the current aggregation epoch.
    ack_epoch_acked: u64,
    /// Largest excess of delivered packets over `btl_bw × epoch length`, this round.
    round_extra_acked: f64,
    /// `round_extra_acked` of the last [`BW_WINDOW`] rounds.
    extra_acked_rounds: [f64; BW_WINDOW],
    next_extra: usize,
    /// Max of `extra_acked_rounds`, packets: added to the window.
    extra_acked: f64,
}

impl Bbr {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
            min_rtt_at: now,
            samples: [0.0; BW_WINDOW],
            next_sample: 0,
            btl_bw: INITIAL_BW,
            delivered: 0,
            pending_delivered: 0,
            delivered_time: now,
            first_sent: now,
            round_max_rate: 0.0,
            lost: 0,
            round_start: now,
            round_delivered: 0,
            round_lost: 0,
            round_app_limited: false,
            mode: Mode::Startup,
            queueing: false,
            overrun_rounds: 0,
            round_min_rtt: None,
            full_bw: 0.0,
            full_bw_rounds: 0,
            tokens: MIN_CWND,
            last_refill: now,
            round_acked: false,
            ack_epoch_start: now,
            ack_epoch_acked: 0,
            round_extra_acked: 0.0,
            extra_acked_rounds: [0.0; BW_WINDOW],
            next_extra: 0,
            extra_acked: 0.0,
        }
    }

    fn gains(&self) -> (f64, f64) {
        match self.mode {
            Mode::Startup => (HIGH_GAIN, HIGH_GAIN),
            Mode::Drain => (1.0 / HIGH_GAIN, HIGH_GAIN),
            // A standing queue (srtt well above min_rtt): drain instead of probing.
            Mode::ProbeBw(_) if self.queueing => (0.75, 2.0),
            Mode::ProbeBw(i) => (CYCLE[i % CYCLE.len()], 2.0),
        }
    }

    /// Pacing rate, packets/s.
    pub(super) fn pacing_rate(&self) -> f64 {
        self.gains().0 * self.btl_bw
    }

    /// Bottleneck bandwidth estimate, packets/s.
    pub(super) fn btl_bw(&self) -> f64 {
        self.btl_bw
    }

    /// Congestion window, packets in flight: `cwnd_gain × btl_bw × (min_rtt + 2 ms) + 64`,
    /// plus the recent ACK aggregation ([`Bbr::on_delivered`]), so a peer that ACKs in bursts
    /// is not left idle between them.
    pub(super) fn cwnd(&self) -> f64 {
        let base = self.base_cwnd();
        // After the queue overflowed, late ACKs are the queue's doing: the allowance would only
        // refill it (on loopback it held ~5,000 packets, 30 ms, in the receiver's socket buffer).
        let extra = if self.overrun_rounds > 0 {
            self.extra_acked.min(base)
        } else {
            self.extra_acked
        };
        base + extra
    }

    fn base_cwnd(&self) -> f64 {
        let rtt = self.min_rtt.unwrap_or(Duration::from_millis(100)) + ACK_ALLOWANCE;
        self.gains().1 * self.btl_bw * rtt.as_secs_f64() + MIN_CWND
    }

    fn bucket(&self) -> f64 {
        32.0 + self.pacing_rate() * ACK_ALLOWANCE.as_secs_f64()
    }

    /// Retransmission timeout for packets a request names that the RACK rule cannot judge
    /// (nothing sent after them is known received, e.g. a lost tail): `2 srtt + 4 rttvar + 5 ms`
    /// (1 s before the first sample, `DEFAULT_PING_CONNECTION`).
    pub(super) fn rto(&self) -> Duration {
        match self.srtt {
            None => Duration::from_secs(1),
            Some(s) => s * 2 + self.rttvar * 4 + Duration::from_millis(5),
        }
    }

    /// Reordering allowance for the RACK rule: a quarter of min_rtt.
    pub(super) fn reorder_window(&self) -> Duration {
        self.min_rtt.unwrap_or(Duration::ZERO) / 4
    }

    pub(super) fn on_rtt_sample(&mut self, now: Instant, rtt: Duration) {
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |r| r.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let err = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
        if self.min_rtt.is_none_or(|m| {
            rtt <= m || now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW
        }) {
            self.min_rtt = Some(rtt);
            self.min_rtt_at = now;
        }
    }

    /// The state a packet sent now records.
    pub(super) fn send_state(&self) -> SendState {
        SendState {
            delivered: self.delivered + self.pending_delivered,
            delivered_time: self.delivered_time,
            first_sent: self.first_sent,
        }
    }

    /// One sent packet is known received: a delivery-rate sample over the time since the last
    /// delivery before it was sent. A burst of packets credited at once (the cumulative ACK
    /// jumping when a hole is filled) is thereby spread over the whole interval.
    pub(super) fn on_packet_delivered(&mut self, now: Instant, sent: SendState, sent_at: Instant) {
        self.pending_delivered += 1;
        self.delivered_time = now;
        self.first_sent = self.first_sent.max(sent_at);
        // BBR: the longer of the ACK interval and the send interval, so that ACKs arriving
        // compressed (a receiver catching up, a cumulative ACK jumping) cannot claim a rate the
        // sender never sent at.
        let ack_elapsed = now.saturating_duration_since(sent.delivered_time);
        let send_elapsed = sent_at.saturating_duration_since(sent.first_sent);
        let interval = ack_elapsed.max(send_elapsed);
        if interval >= Duration::from_micros(500) {
            let n = (self.delivered + self.pending_delivered).saturating_sub(sent.delivered);
            let rate = n as f64 / interval.as_secs_f64();
            self.round_max_rate = self.round_max_rate.max(rate);
        }
    }

    /// `n` packets were freed by one ACK or packet request at `now` (their per-packet samples
    /// were taken by [`Bbr::on_packet_delivered`]).
    ///
    /// ACK aggregation, as BBR estimates it: an epoch starts when ACKs fall behind `btl_bw`;
    /// whatever is delivered within it beyond `btl_bw × its length` arrived in a burst, and the
    /// window must hold that much more or the sender idles until the next burst (a c-toxcore
    /// peer reads its socket once per `tox_iterate`, every 50 ms, and ACKs everything at once).
    /// The largest excess of the last 10 rounds, at most the window, is added to it.
    pub(super) fn on_delivered(&mut self, now: Instant, n: u64) {
        self.delivered += self.pending_delivered;
        self.pending_delivered = 0;
        if n == 0 {
            return;
        }
        self.round_acked = true;
        let elapsed = now.saturating_duration_since(self.ack_epoch_start);
        let mut expected = self.btl_bw * elapsed.as_secs_f64();
        if self.ack_epoch_acked as f64 <= expected || self.ack_epoch_acked + n >= ACK_EPOCH_RESET {
            self.ack_epoch_start = now;
            self.ack_epoch_acked = 0;
            expected = 0.0;
        }
        self.ack_epoch_acked += n;
        let extra = (self.ack_epoch_acked as f64 - expected).min(self.cwnd());
        self.round_extra_acked = self.round_extra_acked.max(extra);
    }

    pub(super) fn on_lost(&mut self, n: u64) {
        self.lost += n;
        if n > 0 {
            self.round_acked = true;
        }
    }

    /// The sender ran out of data with room in the window.
    pub(super) fn set_app_limited(&mut self) {
        self.round_app_limited = true;
    }

    /// Ends rounds that are over and refills the pacing bucket.
    pub(super) fn update(&mut self, now: Instant) {
        let round = self.srtt.unwrap_or(MIN_ROUND).max(MIN_ROUND);
        let elapsed = now.saturating_duration_since(self.round_start);
        // A round without any ACK says nothing about the bandwidth: it lasts until one comes
        // (or the sender idles, or a long silence).
        if elapsed >= round
            && (self.round_acked || self.round_app_limited || elapsed >= MAX_SILENT_ROUND)
        {
            self.end_round(elapsed);
            self.round_start = now;
        }
        let dt = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + dt * self.pacing_rate()).min(self.bucket());
        self.last_refill = now;
    }

    fn end_round(&mut self, elapsed: Duration) {
        // A queue delays every packet of the round; a peer that ACKs late (c-toxcore ACKs once
        // per `tox_iterate`) delays only some, so the round's smallest sample tells them apart
        // where srtt does not. A round without samples keeps the last verdict.
        if let (Some(r), Some(m)) = (self.round_min_rtt.take(), self.min_rtt) {
            self.queueing = r > m * 2 + Duration::from_millis(5);
        }
        let delivered = self.delivered - self.round_delivered;
        let lost = self.lost - self.round_lost;
        if self.queueing && lost > 0 {
            self.overrun_rounds = BW_WINDOW as u32;
        } else {
            self.overrun_rounds = self.overrun_rounds.saturating_sub(1);
        }
        self.round_delivered = self.delivered;
        self.round_lost = self.lost;
        // Per-packet samples when there were any, else the round's average.
        let sample = if self.round_max_rate > 0.0 {
            std::mem::take(&mut self.round_max_rate)
        } else {
            delivered as f64 / elapsed.as_secs_f64()
        };
        let app_limited = std::mem::take(&mut self.round_app_limited);
        self.round_acked = false;
        let extra = std::mem::take(&mut self.round_extra_acked);
        if !app_limited || sample > self.btl_bw {
            self.samples[self.next_sample] = sample;
            self.next_sample = (self.next_sample + 1) % BW_WINDOW;
        }
        // The peer's ACK pattern does not depend on whether we had data to send.
        self.extra_acked_rounds[self.next_extra] = extra;
        self.next_extra = (self.next_extra + 1) % BW_WINDOW;
        self.extra_acked = self.extra_acked_rounds.iter().copied().fold(0.0, f64::max);
        if lost >= 16 && lost * 5 > delivered + lost {
            for s in &mut self.samples {
                *s *= 0.7;
            }
            if self.mode == Mode::Startup {
                self.mode = Mode::Drain;
            }
        }
        let max = self.samples.iter().copied().fold(0.0, f64::max);
        // Before any delivery the initial guess stands.
        if max > 0.0 || self.delivered > 0 {
            self.btl_bw = max.max(MIN_BTL_BW);
        }
        self.mode = match self.mode {
            Mode::Startup if startup_loss(lost, delivered) => Mode::Drain,
            Mode::Startup => {
                // A round with a standing queue counts towards the plateau even when the sender
                // looked app-limited: on loopback the receiver's CPU is the bottleneck and the
                // sender refills its queue in bursts, so most rounds were marked app-limited,
                // Startup (gain 2.89) never ended and ~7,000 packets stayed in flight,
                // overflowing the peer's socket buffer (chat p99 110-200 ms behind them).
                if app_limited && !self.queueing {
                    Mode::Startup
                } else if self.btl_bw >= self.full_bw * 1.25 {
                    self.full_bw = self.btl_bw;
                    self.full_bw_rounds = 0;
                    Mode::Startup
                } else {
                    self.full_bw_rounds += 1;
                    if self.full_bw_rounds >= 3 {
                        Mode::Drain
                    } else {
                        Mode::Startup
                    }
                }
            }
            Mode::Drain => Mode::ProbeBw(2),
            Mode::ProbeBw(i) => Mode::ProbeBw((i + 1) % CYCLE.len()),
        };
    }

    /// Whether one more packet may leave now with `inflight` packets unacknowledged.
    pub(super) fn can_send(&self, inflight: usize) -> bool {
        self.tokens >= 1.0 && (inflight as f64) < self.cwnd()
    }

    /// Only the window (not pacing) holds the sender back.
    pub(super) fn window_full(&self, inflight: usize) -> bool {
        (inflight as f64) >= self.cwnd()
    }

    /// One packet left at `now` (a priority packet may take the bucket below zero; it is
    /// bounded).
    pub(super) fn on_sent(&mut self) {
        self.tokens = (self.tokens - 1.0).max(-self.bucket());
    }

    /// When the next token is there (meaningful with tokens < 1).
    pub(super) fn next_token(&self) -> Instant {
        let wait = ((1.0 - self.tokens) / self.pacing_rate()).max(0.000_05);
        self.last_refill + Duration::from_secs_f64(wait)
    }
}

/// BBR v2's Startup exit on loss: a round losing more than 2 % of its packets (at least 16).
fn startup_loss(lost: u64, delivered: u64) -> bool {
    lost >= 16 && lost * 50 > delivered + lost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `ms` milliseconds of a bulk transfer: every millisecond `per_ms` packets sent a
    /// millisecond earlier are ACKed, each ACK carrying the RTT sample `rtt(step)`; the sender
    /// runs out of queued data every step (app-limited), as a bulk sender refilling through
    /// `send_budget` does.
    fn drive(cc: &mut Bbr, t0: Instant, ms: u64, per_ms: u64, rtt: impl Fn(u64) -> Duration) {
        let mut sent = cc.send_state();
        let mut sent_at = t0;
        for step in 1..=ms {
            let now = t0 + Duration::from_millis(step);
            for _ in 0..per_ms {
                cc.on_packet_delivered(now, sent, sent_at);
            }
            cc.on_delivered(now, per_ms);
            cc.on_rtt_sample(now, rtt(step));
            cc.set_app_limited();
            cc.update(now);
            sent = cc.send_state();
            sent_at = now;
        }
    }

    /// 400 ms of a bulk transfer in which one fast round sets min_rtt and every later sample
    /// sits behind a 20 ms queue.
    fn queued() -> Bbr {
        #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
        let t0 = Instant::now();
        let mut cc = Bbr::new(t0);
        drive(&mut cc, t0, 400, 150, |step| {
            if step < 3 {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(20)
            }
        });
        cc
    }

    #[test]
    fn a_standing_queue_ends_startup() {
        let cc = queued();
        assert!(cc.queueing, "every sample 100x min_rtt is a standing queue");
        assert_ne!(
            cc.mode,
            Mode::Startup,
            "app-limited rounds with a queue still end Startup"
        );
    }

    /// A late-ACKing peer (every sample 20 ms) with a large ACK-aggregation allowance: no cap
    /// while nothing is lost, the cap for [`BW_WINDOW`] rounds once a queued round loses packets.
    #[test]
    fn the_aggregation_allowance_is_capped_only_after_an_overrun() {
        let mut cc = queued();
        assert!(cc.queueing);
        cc.extra_acked = 10.0 * cc.base_cwnd();
        assert!(
            cc.cwnd() > 5.0 * cc.base_cwnd(),
            "queueing without loss keeps the allowance (a c-toxcore peer ACKs this late)"
        );
        cc.on_lost(20);
        cc.end_round(Duration::from_millis(20));
        assert!(cc.queueing);
        cc.extra_acked = 10.0 * cc.base_cwnd();
        assert!(
            cc.cwnd() <= 2.0 * cc.base_cwnd() + 1.0,
            "cwnd {} > 2 x base {} after an overrun",
            cc.cwnd(),
            cc.base_cwnd()
        );
        for _ in 0..BW_WINDOW {
            cc.end_round(Duration::from_millis(20));
        }
        cc.extra_acked = 10.0 * cc.base_cwnd();
        assert!(
            cc.cwnd() > 5.0 * cc.base_cwnd(),
            "the cap ends BW_WINDOW clean rounds later"
        );
    }

    #[test]
    fn late_acks_of_some_packets_are_not_a_queue() {
        #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
        let t0 = Instant::now();
        let mut cc = Bbr::new(t0);
        // A peer that ACKs once per 50 ms loop: most samples are late, but the packets sent
        // just before its ACK come back at once.
        drive(&mut cc, t0, 400, 150, |step| {
            if step % 5 == 0 {
                Duration::from_micros(300)
            } else {
                Duration::from_millis(40)
            }
        });
        assert!(!cc.queueing, "some samples at min_rtt: no standing queue");
    }
}
