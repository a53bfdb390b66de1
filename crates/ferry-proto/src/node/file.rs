//! Messenger file transfer (`tox-protocol.md` §7.3; c-toxcore 0.2.18 `Messenger.c`
//! `new_filesender`, `file_control`, `file_seek`, `send_file_data`, `do_reqchunk_filecb`,
//! `handle_filecontrol`), sans-IO and wire-compatible with c-toxcore.
//!
//! # Flow
//! 1. Sender: [`Node::file_send`] takes a free outgoing slot (0..=255 per friend) and sends
//!    FILE_SENDREQUEST `[file#][kind][size][file id][name]`.
//! 2. Receiver: [`FileEvent::Recv`]; the app may [`Node::file_seek`] (resume: only before
//!    accepting, position < size) and then [`Node::file_control`] `Accept`.
//! 3. Sender, once accepted: the node *pulls* data from the app as c-toxcore's
//!    `file_chunk_request` callback does: [`FileEvent::ChunkRequest`] `{position, length ≤ 1371}`
//!    for as many chunks as net_crypto's send queue has room for: free slots minus
//!    [`MIN_SLOTS_FREE`] (as c-toxcore), and at most what the congestion controller wants
//!    queued now ([`crate::net_crypto::NetCrypto::send_budget`]: the window plus about 2 ms of
//!    pacing, so a chat message queued behind file data waits little), minus chunks already
//!    requested from the app and not handed back yet; the app answers
//!    [`Node::file_send_chunk`] with exactly that chunk (from inside its event handler, or
//!    later). The chunks are FILE_DATA lossless packets, the only congestion-controlled
//!    messenger packets.
//! 4. Receiver: [`FileEvent::Chunk`] per chunk at the position it belongs to; a chunk shorter
//!    than 1371 bytes or reaching the size ends the transfer, reported as a final empty
//!    `Chunk` at `position == size`.
//! 5. Sender: when the friend's net_crypto has acknowledged the last chunk,
//!    [`FileEvent::ChunkRequest`] with `length == 0` says the transfer is complete.
//!
//! Pause/resume: `Pause`, then `Accept` again (each side's pause is separate, as c-toxcore's
//! `FILE_PAUSE_US`/`FILE_PAUSE_OTHER`). Kill ends it on both sides. When the friend goes
//! offline every transfer with it is dropped ([`FileEvent::Broken`], which c-toxcore does not
//! report); the app resumes by sending the request again with the same file id, and the
//! receiver seeks to the prefix it kept.
//!
//! Remote input never errors: malformed or out-of-state packets are dropped, and a control for a
//! file we do not have is answered with a kill, as c-toxcore does.

use std::time::Instant;

use ferry_crypto::PublicKey;
use ferry_wire::messenger::{
    FILE_ID_LENGTH, FILE_SIZE_UNKNOWN, FileControl, FileControlKind, FileSendRequest,
    MAX_CONCURRENT_FILE_PIPES, MAX_FILE_DATA_SIZE, MAX_FILENAME_LENGTH, MessengerPacket,
    encode_file_data,
};

use super::{Node, NodeError, NodeEvent};

/// Send-queue slots file data leaves free for other packets (c-toxcore `MIN_SLOTS_FREE` =
/// `CRYPTO_MIN_QUEUE_LENGTH / 4` = 16).
pub const MIN_SLOTS_FREE: u32 = 16;
/// Most chunk requests emitted per friend per node step (c-toxcore: 128 rounds over the files).
pub const MAX_REQUESTS_PER_STEP: u32 = 4096;

/// Which of a friend's two file tables a number refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileDirection {
    /// A file we send (our FILE_SENDREQUEST's number).
    Outgoing,
    /// A file we receive (the friend's number).
    Incoming,
}

/// A file of one friend: direction and the 0..=255 wire file number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileNumber {
    /// Direction.
    pub direction: FileDirection,
    /// File number on the wire.
    pub number: u8,
}

impl FileNumber {
    /// An outgoing file.
    pub fn outgoing(number: u8) -> Self {
        Self {
            direction: FileDirection::Outgoing,
            number,
        }
    }

    /// An incoming file.
    pub fn incoming(number: u8) -> Self {
        Self {
            direction: FileDirection::Incoming,
            number,
        }
    }
}

/// A control an app can send ([`Node::file_control`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileCommand {
    /// Accept an offered (incoming) file, or resume a file we paused.
    Accept,
    /// Pause (until we `Accept` again).
    Pause,
    /// Cancel.
    Kill,
}

/// A control the friend sent, as reported in [`FileEvent::Control`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerControl {
    /// The friend accepted our outgoing file: chunk requests follow.
    Accept,
    /// The friend resumed a file it had paused.
    Resume,
    /// The friend paused the file.
    Pause,
    /// The friend cancelled the file (it is gone).
    Kill,
    /// The friend (receiver) asked us to start our outgoing file at this byte.
    Seek(u64),
}

/// File-transfer events ([`NodeEvent::File`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileEvent {
    /// The friend offers a file (incoming `number`); accept with [`Node::file_control`].
    Recv {
        /// The friend.
        friend: PublicKey,
        /// Incoming file number.
        number: u8,
        /// Kind (0 data, 1 avatar).
        kind: u32,
        /// Size, bytes (`u64::MAX` = unknown).
        size: u64,
        /// File id (32 bytes, stable across resumes).
        file_id: [u8; FILE_ID_LENGTH],
        /// Name bytes (≤ 255).
        name: Vec<u8>,
    },
    /// A chunk of incoming file `number` belonging at byte `position`. Empty `data` means the
    /// file is complete at `position` bytes.
    Chunk {
        /// The friend.
        friend: PublicKey,
        /// Incoming file number.
        number: u8,
        /// Byte offset.
        position: u64,
        /// The bytes (≤ 1371).
        data: Vec<u8>,
    },
    /// Send `length` bytes of outgoing file `number` from `position` with
    /// [`Node::file_send_chunk`]. `length == 0`: the friend has received the whole file.
    ChunkRequest {
        /// The friend.
        friend: PublicKey,
        /// Outgoing file number.
        number: u8,
        /// Byte offset.
        position: u64,
        /// Bytes wanted (≤ 1371; 0 = done).
        length: u16,
    },
    /// The friend sent a control for one of our files.
    Control {
        /// The friend.
        friend: PublicKey,
        /// Which file.
        file: FileNumber,
        /// What.
        control: PeerControl,
    },
    /// The friend went offline: the transfer is gone (resume by offering the same file id
    /// again once the friend is back).
    Broken {
        /// The friend.
        friend: PublicKey,
        /// Which file.
        file: FileNumber,
        /// Bytes sent (outgoing: handed to net_crypto) or received (incoming) until then.
        transferred: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    NotAccepted,
    Transferring,
    /// Outgoing only: every byte is queued; waiting for the ACK of `last_packet`.
    Finished,
}

#[derive(Clone, Debug)]
struct Transfer {
    status: Status,
    size: u64,
    /// Bytes passed (outgoing: handed to net_crypto; incoming: received).
    transferred: u64,
    /// Outgoing: bytes asked of the app.
    requested: u64,
    paused_us: bool,
    paused_other: bool,
    file_id: [u8; FILE_ID_LENGTH],
    kind: u32,
    last_packet: u32,
}

impl Transfer {
    fn new(size: u64, kind: u32, file_id: [u8; FILE_ID_LENGTH]) -> Self {
        Self {
            status: Status::NotAccepted,
            size,
            transferred: 0,
            requested: 0,
            paused_us: false,
            paused_other: false,
            file_id,
            kind,
            last_packet: 0,
        }
    }

    fn pending_chunks(&self) -> u32 {
        let b = self.requested.saturating_sub(self.transferred);
        b.div_ceil(MAX_FILE_DATA_SIZE as u64)
            .min(u64::from(u32::MAX)) as u32
    }
}

/// A file transfer as [`Node::file_transfers`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The friend.
    pub friend: PublicKey,
    /// Which file.
    pub file: FileNumber,
    /// Kind.
    pub kind: u32,
    /// Size (`u64::MAX` unknown).
    pub size: u64,
    /// Bytes sent / received.
    pub transferred: u64,
    /// File id.
    pub file_id: [u8; FILE_ID_LENGTH],
    /// Accepted by the receiver.
    pub accepted: bool,
    /// Paused by us.
    pub paused_us: bool,
    /// Paused by the friend.
    pub paused_other: bool,
}

/// One friend's transfers: 256 outgoing and 256 incoming slots (the cap is the wire's file
/// number; nothing else is kept per remote input).
#[derive(Debug, Default)]
pub(super) struct FriendFiles {
    sending: Vec<Option<Transfer>>,
    receiving: Vec<Option<Transfer>>,
    /// Outgoing files in `Transferring`/`Finished` (c-toxcore `num_sending_files`).
    active: u16,
    /// Round-robin start for chunk requests.
    cursor: usize,
    /// Outgoing files in `Finished` (waiting for the ACK of their last chunk).
    finishing: u16,
}

impl FriendFiles {
    fn table(&mut self, d: FileDirection) -> &mut Vec<Option<Transfer>> {
        let t = match d {
            FileDirection::Outgoing => &mut self.sending,
            FileDirection::Incoming => &mut self.receiving,
        };
        if t.is_empty() {
            t.resize(MAX_CONCURRENT_FILE_PIPES, None);
        }
        t
    }

    fn get(&mut self, f: FileNumber) -> Option<&mut Transfer> {
        self.table(f.direction)
            .get_mut(usize::from(f.number))
            .and_then(Option::as_mut)
    }

    fn remove(&mut self, f: FileNumber) -> Option<Transfer> {
        let t = self
            .table(f.direction)
            .get_mut(usize::from(f.number))
            .and_then(Option::take)?;
        if f.direction == FileDirection::Outgoing
            && matches!(t.status, Status::Transferring | Status::Finished)
        {
            self.active = self.active.saturating_sub(1);
        }
        if f.direction == FileDirection::Outgoing && t.status == Status::Finished {
            self.finishing = self.finishing.saturating_sub(1);
        }
        Some(t)
    }

    fn is_empty(&self) -> bool {
        self.sending
            .iter()
            .chain(&self.receiving)
            .all(Option::is_none)
    }
}

fn ctl(receiving: bool, number: u8, control: FileControlKind) -> Vec<u8> {
    MessengerPacket::FileControl(FileControl {
        receiving,
        file_number: number,
        control,
    })
    .encode()
}

impl Node {
    fn online_files(&mut self, pk: &PublicKey) -> Result<&mut FriendFiles, NodeError> {
        let f = self.friends.get(pk).ok_or(NodeError::NotFriend)?;
        if !f.online {
            return Err(NodeError::NotOnline);
        }
        Ok(self.files.entry(*pk).or_default())
    }

    /// Offers a file to an online friend (`tox_file_send`): sends FILE_SENDREQUEST and returns
    /// the outgoing file number. `file_id` must stay the same when the file is offered again
    /// to resume. `size` `u64::MAX` = unknown (a stream ended by a short chunk).
    ///
    /// # Errors
    /// [`NodeError::NotFriend`], [`NodeError::NotOnline`], [`NodeError::BadLength`] (name over
    /// 255 bytes), [`NodeError::TooManyFiles`] (256 outgoing), [`NodeError::Congested`].
    pub fn file_send(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        kind: u32,
        size: u64,
        file_id: [u8; FILE_ID_LENGTH],
        name: &[u8],
    ) -> Result<u8, NodeError> {
        super::check_len("file name", name.len(), 0, MAX_FILENAME_LENGTH)?;
        let files = self.online_files(pk)?;
        let slot = files
            .table(FileDirection::Outgoing)
            .iter()
            .position(Option::is_none)
            .ok_or(NodeError::TooManyFiles)?;
        let number = slot as u8;
        let p = MessengerPacket::FileSendRequest(FileSendRequest {
            file_number: number,
            kind,
            size,
            file_id,
            name: name.to_vec(),
        });
        self.crypto
            .send_lossless(now, pk, &p.encode())
            .map_err(|e| NodeError::Congested(e.to_string()))?;
        if let Some(files) = self.files.get_mut(pk) {
            files.table(FileDirection::Outgoing)[slot] = Some(Transfer::new(size, kind, file_id));
        }
        Ok(number)
    }

    /// Accepts, pauses, resumes (`Accept` after our `Pause`) or kills a file (`tox_file_control`).
    ///
    /// # Errors
    /// [`NodeError::NotFriend`], [`NodeError::NotOnline`], [`NodeError::NoSuchFile`],
    /// [`NodeError::FileState`] (e.g. accepting our own offer, pausing twice, resuming a file the
    /// friend paused), [`NodeError::Congested`].
    pub fn file_control(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        file: FileNumber,
        command: FileCommand,
    ) -> Result<(), NodeError> {
        let files = self.online_files(pk)?;
        let t = files.get(file).ok_or(NodeError::NoSuchFile)?;
        let incoming = file.direction == FileDirection::Incoming;
        let control = match command {
            FileCommand::Kill => FileControlKind::Kill,
            FileCommand::Pause => {
                if t.paused_us || t.status != Status::Transferring {
                    return Err(NodeError::FileState("not transferring, or already paused"));
                }
                FileControlKind::Pause
            }
            FileCommand::Accept => {
                if t.status == Status::Transferring {
                    if !t.paused_us {
                        return Err(NodeError::FileState("not paused by us"));
                    }
                } else if t.status != Status::NotAccepted || !incoming {
                    return Err(NodeError::FileState("only the receiver accepts an offer"));
                }
                FileControlKind::Accept
            }
        };
        self.crypto
            .send_lossless(now, pk, &ctl(incoming, file.number, control))
            .map_err(|e| NodeError::Congested(e.to_string()))?;
        let files = self.files.entry(*pk).or_default();
        match command {
            FileCommand::Kill => {
                files.remove(file);
            }
            FileCommand::Pause => {
                if let Some(t) = files.get(file) {
                    t.paused_us = true;
                }
            }
            FileCommand::Accept => {
                if let Some(t) = files.get(file) {
                    t.status = Status::Transferring;
                    t.paused_us = false;
                }
            }
        }
        Ok(())
    }

    /// Asks the friend to start incoming file `number` at `position` (`tox_file_seek`): only
    /// before accepting, `position < size`. The following chunks start there.
    ///
    /// # Errors
    /// [`NodeError::NotFriend`], [`NodeError::NotOnline`], [`NodeError::NoSuchFile`],
    /// [`NodeError::FileState`] (accepted already, or position ≥ size), [`NodeError::Congested`].
    pub fn file_seek(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        number: u8,
        position: u64,
    ) -> Result<(), NodeError> {
        let file = FileNumber::incoming(number);
        let files = self.online_files(pk)?;
        let t = files.get(file).ok_or(NodeError::NoSuchFile)?;
        if t.status != Status::NotAccepted {
            return Err(NodeError::FileState("seek only before accepting"));
        }
        if position >= t.size {
            return Err(NodeError::FileState("seek position beyond the size"));
        }
        self.crypto
            .send_lossless(now, pk, &ctl(true, number, FileControlKind::Seek(position)))
            .map_err(|e| NodeError::Congested(e.to_string()))?;
        if let Some(t) = self.files.get_mut(pk).and_then(|f| f.get(file)) {
            t.transferred = position;
        }
        Ok(())
    }

    /// Sends the chunk a [`FileEvent::ChunkRequest`] asked for (`tox_file_send_chunk`):
    /// `position` must be the next byte not yet sent and `data` 1371 bytes except for the last
    /// chunk. When net_crypto's queue is full the request is forgotten and asked again later.
    ///
    /// # Errors
    /// [`NodeError::NotFriend`], [`NodeError::NotOnline`], [`NodeError::NoSuchFile`],
    /// [`NodeError::FileState`] (not transferring, wrong position or length),
    /// [`NodeError::Congested`].
    pub fn file_send_chunk(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        number: u8,
        position: u64,
        data: &[u8],
    ) -> Result<(), NodeError> {
        let files = self.online_files(pk)?;
        let t = files
            .get(FileNumber::outgoing(number))
            .ok_or(NodeError::NoSuchFile)?;
        if t.status != Status::Transferring {
            return Err(NodeError::FileState("not transferring"));
        }
        let len = data.len() as u64;
        if data.len() > MAX_FILE_DATA_SIZE
            || t.size - t.transferred < len
            || (t.size != FILE_SIZE_UNKNOWN
                && data.len() != MAX_FILE_DATA_SIZE
                && t.transferred + len != t.size)
        {
            return Err(NodeError::FileState("bad chunk length"));
        }
        if position != t.transferred || (t.requested <= position && t.size != 0) {
            return Err(NodeError::FileState("chunk not at the requested position"));
        }
        match self
            .crypto
            .send_lossless(now, pk, &encode_file_data(number, data))
        {
            Ok(pn) => {
                if let Some(files) = self.files.get_mut(pk) {
                    let mut finished = false;
                    if let Some(t) = files.get(FileNumber::outgoing(number)) {
                        t.transferred += len;
                        if data.len() != MAX_FILE_DATA_SIZE || t.transferred == t.size {
                            t.status = Status::Finished;
                            t.last_packet = pn;
                            finished = true;
                        }
                    }
                    if finished {
                        files.finishing += 1;
                    }
                }
                Ok(())
            }
            Err(e) => {
                if let Some(t) = self
                    .files
                    .get_mut(pk)
                    .and_then(|f| f.get(FileNumber::outgoing(number)))
                {
                    // Ask again from here once there is room.
                    t.requested = t.transferred;
                }
                Err(NodeError::Congested(e.to_string()))
            }
        }
    }

    /// Every transfer with every friend.
    pub fn file_transfers(&self) -> Vec<FileInfo> {
        let mut out = Vec::new();
        for (pk, files) in &self.files {
            for (dir, table) in [
                (FileDirection::Outgoing, &files.sending),
                (FileDirection::Incoming, &files.receiving),
            ] {
                for (i, t) in table.iter().enumerate() {
                    if let Some(t) = t {
                        out.push(FileInfo {
                            friend: *pk,
                            file: FileNumber {
                                direction: dir,
                                number: i as u8,
                            },
                            kind: t.kind,
                            size: t.size,
                            transferred: t.transferred,
                            file_id: t.file_id,
                            accepted: t.status != Status::NotAccepted,
                            paused_us: t.paused_us,
                            paused_other: t.paused_other,
                        });
                    }
                }
            }
        }
        out
    }

    /// A FILE_* packet from an online friend.
    pub(super) fn on_file_packet(&mut self, now: Instant, peer: PublicKey, p: MessengerPacket) {
        match p {
            MessengerPacket::FileSendRequest(r) => {
                let files = self.files.entry(peer).or_default();
                let slot = &mut files.table(FileDirection::Incoming)[usize::from(r.file_number)];
                if slot.is_some() {
                    return;
                }
                *slot = Some(Transfer::new(r.size, r.kind, r.file_id));
                self.emit(NodeEvent::File(FileEvent::Recv {
                    friend: peer,
                    number: r.file_number,
                    kind: r.kind,
                    size: r.size,
                    file_id: r.file_id,
                    name: r.name,
                }));
            }
            MessengerPacket::FileControl(c) => self.on_file_control(now, peer, c),
            MessengerPacket::FileData { file_number, data } => {
                let Some(files) = self.files.get_mut(&peer) else {
                    return;
                };
                let file = FileNumber::incoming(file_number);
                let Some(t) = files.get(file) else {
                    return;
                };
                if t.status != Status::Transferring {
                    return;
                }
                let position = t.transferred;
                let len = (data.len() as u64).min(t.size - t.transferred);
                t.transferred += len;
                let done = len == 0 || t.transferred >= t.size || data.len() != MAX_FILE_DATA_SIZE;
                let end = t.transferred;
                if done {
                    files.remove(file);
                }
                if len > 0 {
                    let mut data = data;
                    data.truncate(len as usize);
                    self.emit(NodeEvent::File(FileEvent::Chunk {
                        friend: peer,
                        number: file_number,
                        position,
                        data,
                    }));
                }
                if done {
                    self.emit(NodeEvent::File(FileEvent::Chunk {
                        friend: peer,
                        number: file_number,
                        position: end,
                        data: Vec::new(),
                    }));
                }
            }
            _ => {}
        }
    }

    fn on_file_control(&mut self, now: Instant, peer: PublicKey, c: FileControl) {
        // Their "receiving" is our outgoing file.
        let file = if c.receiving {
            FileNumber::outgoing(c.file_number)
        } else {
            FileNumber::incoming(c.file_number)
        };
        let outgoing = c.receiving;
        let files = self.files.entry(peer).or_default();
        let Some(t) = files.get(file) else {
            // c-toxcore: tell the other side to kill a file we do not have.
            if c.control != FileControlKind::Kill {
                let _ = self.crypto.send_lossless(
                    now,
                    &peer,
                    &ctl(!outgoing, c.file_number, FileControlKind::Kill),
                );
            }
            return;
        };
        let control = match c.control {
            FileControlKind::Accept => {
                if outgoing && t.status == Status::NotAccepted {
                    t.status = Status::Transferring;
                    files.active += 1;
                    PeerControl::Accept
                } else if t.paused_other {
                    t.paused_other = false;
                    PeerControl::Resume
                } else {
                    return;
                }
            }
            FileControlKind::Pause => {
                if t.paused_other || t.status != Status::Transferring {
                    return;
                }
                t.paused_other = true;
                PeerControl::Pause
            }
            FileControlKind::Kill => {
                files.remove(file);
                PeerControl::Kill
            }
            FileControlKind::Seek(pos) => {
                if t.status != Status::NotAccepted || !outgoing || pos >= t.size {
                    return;
                }
                t.requested = pos;
                t.transferred = pos;
                PeerControl::Seek(pos)
            }
        };
        self.emit(NodeEvent::File(FileEvent::Control {
            friend: peer,
            file,
            control,
        }));
    }

    /// net_crypto acknowledged `packet_number`: finished outgoing files whose last chunk it
    /// covers are complete.
    pub(super) fn on_file_delivered(&mut self, peer: PublicKey, packet_number: u32) {
        let Some(files) = self.files.get_mut(&peer) else {
            return;
        };
        if files.active == 0 {
            return;
        }
        if files.finishing == 0 {
            return;
        }
        let mut done = Vec::new();
        for (i, t) in files.sending.iter().enumerate() {
            if let Some(t) = t
                && t.status == Status::Finished
                && t.last_packet == packet_number
            {
                done.push((i as u8, t.transferred));
            }
        }
        for &(number, _) in &done {
            files.remove(FileNumber::outgoing(number));
        }
        for (number, position) in done {
            self.emit(NodeEvent::File(FileEvent::ChunkRequest {
                friend: peer,
                number,
                position,
                length: 0,
            }));
        }
    }

    /// The friend went offline: every transfer with it is dropped (c-toxcore `break_files`),
    /// reported as [`FileEvent::Broken`].
    pub(super) fn on_file_friend_offline(&mut self, peer: PublicKey) {
        let Some(files) = self.files.remove(&peer) else {
            return;
        };
        for (dir, table) in [
            (FileDirection::Outgoing, files.sending),
            (FileDirection::Incoming, files.receiving),
        ] {
            for (i, t) in table.into_iter().enumerate() {
                if let Some(t) = t {
                    self.emit(NodeEvent::File(FileEvent::Broken {
                        friend: peer,
                        file: FileNumber {
                            direction: dir,
                            number: i as u8,
                        },
                        transferred: t.transferred,
                    }));
                }
            }
        }
    }

    /// Requests chunks from the app while net_crypto's send queue has room (c-toxcore
    /// `do_reqchunk_filecb`), round-robin over the friend's sending files. Also sends the empty
    /// chunk of a zero-size file. Called after every input.
    pub(super) fn file_request_chunks(&mut self, now: Instant) {
        if self.files.is_empty() {
            return;
        }
        let peers: Vec<PublicKey> = self
            .files
            .iter()
            .filter(|(_, f)| f.active > 0)
            .map(|(k, _)| *k)
            .collect();
        for pk in peers {
            let free = self.crypto.send_queue_free(&pk);
            if free == 0 {
                continue;
            }
            let budget_now = self.crypto.send_budget(&pk);
            let Some(files) = self.files.get_mut(&pk) else {
                continue;
            };
            let pending: u32 = files
                .sending
                .iter()
                .flatten()
                .map(Transfer::pending_chunks)
                .sum();
            let mut budget = free
                .saturating_sub(MIN_SLOTS_FREE)
                .min(budget_now)
                .saturating_sub(pending)
                .min(MAX_REQUESTS_PER_STEP);
            let mut requests = Vec::new();
            let mut zero = Vec::new();
            // The sending files that want data, in round-robin order from the cursor.
            let mut ready: Vec<usize> = Vec::new();
            for k in 0..MAX_CONCURRENT_FILE_PIPES {
                let i = (files.cursor + k) % MAX_CONCURRENT_FILE_PIPES;
                let Some(Some(t)) = files.sending.get(i) else {
                    continue;
                };
                if t.status != Status::Transferring || t.paused_us || t.paused_other {
                    continue;
                }
                if t.size == 0 {
                    if t.requested == 0 {
                        zero.push(i as u8);
                    }
                } else if t.requested < t.size {
                    ready.push(i);
                }
            }
            files.cursor = (files.cursor + 1) % MAX_CONCURRENT_FILE_PIPES;
            while budget > 0 && !ready.is_empty() {
                ready.retain(|&i| {
                    let Some(Some(t)) = files.sending.get_mut(i) else {
                        return false;
                    };
                    if budget == 0 || t.requested >= t.size {
                        return budget > 0 && t.requested < t.size;
                    }
                    let length = (t.size - t.requested).min(MAX_FILE_DATA_SIZE as u64) as u16;
                    requests.push((i as u8, t.requested, length));
                    t.requested += u64::from(length);
                    budget -= 1;
                    t.requested < t.size
                });
            }
            for (number, position, length) in requests {
                self.emit(NodeEvent::File(FileEvent::ChunkRequest {
                    friend: pk,
                    number,
                    position,
                    length,
                }));
            }
            for number in zero {
                if let Some(t) = self
                    .files
                    .get_mut(&pk)
                    .and_then(|f| f.get(FileNumber::outgoing(number)))
                {
                    t.requested = 1;
                }
                let _ = self.file_send_chunk(now, &pk, number, 0, &[]);
            }
        }
        self.files.retain(|_, f| !f.is_empty() || f.active > 0);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use ferry_crypto::KeyPair;
    use ferry_crypto::rng::FerryRng;
    use ferry_wire::messenger::FILE_KIND_DATA;

    use super::*;
    use crate::node::NodeConfig;
    use crate::{Destination, Endpoint};

    /// Two nodes wired to each other directly (no DHT/onion), one app per node that serves
    /// chunks from `outgoing` and collects incoming ones.
    struct Pair {
        nodes: [Node; 2],
        addrs: [SocketAddr; 2],
        keys: [PublicKey; 2],
        now: Instant,
        /// (node, number) → data being sent.
        outgoing: Vec<(usize, u8, Vec<u8>)>,
        /// (node, number) → data received, completion.
        incoming: Vec<(usize, u8, Vec<u8>, bool)>,
        events: Vec<(usize, FileEvent)>,
        answer_chunks: bool,
    }

    impl Pair {
        fn new() -> Self {
            #[allow(clippy::disallowed_methods)] // a test clock origin
            let now = Instant::now();
            let mut rng = FerryRng::from_u64(7);
            let mk = |rng: &mut FerryRng| {
                let real = KeyPair::generate(rng);
                let dht = KeyPair::generate(rng);
                (real, dht)
            };
            let (ra, da) = mk(&mut rng);
            let (rb, db) = mk(&mut rng);
            let keys = [ra.public, rb.public];
            let dks = [da.public, db.public];
            let addrs: [SocketAddr; 2] = [
                "127.0.0.1:10001".parse().expect("addr"),
                "127.0.0.1:10002".parse().expect("addr"),
            ];
            let mut a = Node::new(NodeConfig::default(), ra, da, 1, rng.fork(), now);
            let mut b = Node::new(NodeConfig::default(), rb, db, 2, rng.fork(), now);
            a.add_friend_norequest(now, keys[1]).expect("friend");
            b.add_friend_norequest(now, keys[0]).expect("friend");
            a.crypto.set_peer_dht_key(now, &keys[1], dks[1]);
            b.crypto.set_peer_dht_key(now, &keys[0], dks[0]);
            a.crypto.set_peer_addr(now, &keys[1], addrs[1]);
            b.crypto.set_peer_addr(now, &keys[0], addrs[0]);
            let mut p = Self {
                nodes: [a, b],
                addrs,
                keys,
                now,
                outgoing: Vec::new(),
                incoming: Vec::new(),
                events: Vec::new(),
                answer_chunks: true,
            };
            for _ in 0..2000 {
                if p.nodes[0].friends()[0].connection != crate::node::Connection::None
                    && p.nodes[1].friends()[0].connection != crate::node::Connection::None
                {
                    return p;
                }
                p.step();
            }
            panic!("pair did not come online");
        }

        /// Delivers every datagram, runs due timers, lets the apps react; 1 ms per step.
        fn step(&mut self) {
            for i in 0..2 {
                while let Some(ev) = self.nodes[i].poll_event() {
                    if let NodeEvent::File(fe) = ev {
                        self.app(i, fe);
                    }
                }
            }
            let mut moved = true;
            while moved {
                moved = false;
                for i in 0..2 {
                    while let Some(t) = self.nodes[i].poll_transmit() {
                        moved = true;
                        if t.destination == Destination::Addr(self.addrs[1 - i]) {
                            self.nodes[1 - i].handle_datagram(self.now, self.addrs[i], &t.payload);
                        }
                    }
                    while let Some(ev) = self.nodes[i].poll_event() {
                        moved = true;
                        if let NodeEvent::File(fe) = ev {
                            self.app(i, fe);
                        }
                    }
                }
            }
            self.now += Duration::from_millis(1);
            for n in &mut self.nodes {
                if self.now >= n.poll_timeout() {
                    n.handle_timeout(self.now);
                }
            }
        }

        fn app(&mut self, i: usize, e: FileEvent) {
            match &e {
                FileEvent::ChunkRequest {
                    friend,
                    number,
                    position,
                    length,
                } if *length > 0 && self.answer_chunks => {
                    let data = self
                        .outgoing
                        .iter()
                        .find(|(n, f, _)| *n == i && f == number)
                        .map(|(_, _, d)| {
                            d[*position as usize..*position as usize + usize::from(*length)]
                                .to_vec()
                        })
                        .expect("known file");
                    let _ =
                        self.nodes[i].file_send_chunk(self.now, friend, *number, *position, &data);
                }
                FileEvent::Chunk {
                    number,
                    position,
                    data,
                    ..
                } => {
                    let r = self
                        .incoming
                        .iter_mut()
                        .find(|(n, f, _, done)| *n == i && f == number && !*done)
                        .expect("accepted file");
                    if data.is_empty() {
                        r.3 = true;
                    } else {
                        assert_eq!(*position as usize, r.2.len(), "chunks arrive in order");
                        r.2.extend_from_slice(data);
                    }
                }
                _ => {}
            }
            self.events.push((i, e));
        }

        fn send(&mut self, from: usize, data: Vec<u8>, id: u8) -> u8 {
            let to = self.keys[1 - from];
            let n = self.nodes[from]
                .file_send(
                    self.now,
                    &to,
                    FILE_KIND_DATA,
                    data.len() as u64,
                    [id; 32],
                    b"f.bin",
                )
                .expect("send");
            self.outgoing.push((from, n, data));
            n
        }

        fn recv_number(&mut self, at: usize, id: u8) -> u8 {
            for _ in 0..100 {
                if let Some(n) = self.events.iter().find_map(|(i, e)| match e {
                    FileEvent::Recv {
                        number, file_id, ..
                    } if *i == at && file_id[0] == id => Some(*number),
                    _ => None,
                }) {
                    return n;
                }
                self.step();
            }
            panic!("no offer arrived");
        }

        fn accept(&mut self, at: usize, number: u8, seek: u64, prefix: Vec<u8>) {
            let from = self.keys[1 - at];
            if seek > 0 {
                self.nodes[at]
                    .file_seek(self.now, &from, number, seek)
                    .expect("seek");
            }
            self.incoming.push((at, number, prefix, false));
            self.nodes[at]
                .file_control(
                    self.now,
                    &from,
                    FileNumber::incoming(number),
                    FileCommand::Accept,
                )
                .expect("accept");
        }

        fn run_until(&mut self, mut f: impl FnMut(&Self) -> bool, steps: usize) {
            for _ in 0..steps {
                if f(self) {
                    return;
                }
                self.step();
            }
            panic!("condition not reached");
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn transfers_both_ways_with_completion() {
        let mut p = Pair::new();
        let a_data = pattern(300_000, 1);
        let b_data = pattern(MAX_FILE_DATA_SIZE * 10, 2);
        p.send(0, a_data.clone(), 1);
        p.send(1, b_data.clone(), 2);
        let na = p.recv_number(1, 1);
        let nb = p.recv_number(0, 2);
        p.accept(1, na, 0, Vec::new());
        p.accept(0, nb, 0, Vec::new());
        p.run_until(|p| p.incoming.iter().all(|r| r.3), 20_000);
        assert_eq!(p.incoming[0].2, a_data);
        assert_eq!(p.incoming[1].2, b_data);
        // Both senders learn that the friend got everything.
        p.run_until(
            |p| {
                p.events
                    .iter()
                    .filter(|(_, e)| matches!(e, FileEvent::ChunkRequest { length: 0, .. }))
                    .count()
                    == 2
            },
            5_000,
        );
        assert!(p.nodes[0].file_transfers().is_empty());
        assert!(p.nodes[1].file_transfers().is_empty());
    }

    #[test]
    fn pause_resume_kill_and_seek() {
        let mut p = Pair::new();
        let data = pattern(12_000_000, 3);
        p.send(0, data.clone(), 9);
        let n = p.recv_number(1, 9);
        // Resume at a prefix the receiver kept.
        let seek = 5 * MAX_FILE_DATA_SIZE as u64 + 17;
        p.accept(1, n, seek, data[..seek as usize].to_vec());
        p.run_until(|p| p.incoming[0].2.len() > 100_000, 20_000);
        let pk0 = p.keys[0];
        p.nodes[1]
            .file_control(p.now, &pk0, FileNumber::incoming(n), FileCommand::Pause)
            .expect("pause");
        // Pausing twice is refused, as in c-toxcore.
        assert!(
            p.nodes[1]
                .file_control(p.now, &pk0, FileNumber::incoming(n), FileCommand::Pause)
                .is_err()
        );
        p.run_until(
            |p| {
                p.events.iter().any(|(i, e)| {
                    *i == 0
                        && matches!(
                            e,
                            FileEvent::Control {
                                control: PeerControl::Pause,
                                ..
                            }
                        )
                })
            },
            1_000,
        );
        // The sender asks the app for nothing more (what net_crypto had queued still arrives).
        let requests = |p: &Pair| {
            p.events
                .iter()
                .filter(|(i, e)| *i == 0 && matches!(e, FileEvent::ChunkRequest { .. }))
                .count()
        };
        let before = requests(&p);
        for _ in 0..500 {
            p.step();
        }
        assert_eq!(requests(&p), before, "no chunk requests while paused");
        assert!(!p.incoming[0].3);
        p.nodes[1]
            .file_control(p.now, &pk0, FileNumber::incoming(n), FileCommand::Accept)
            .expect("resume");
        p.run_until(|p| p.incoming[0].3, 50_000);
        assert_eq!(p.incoming[0].2, data);

        // Kill from the receiver mid-way.
        p.send(0, pattern(30_000_000, 4), 10);
        let n = p.recv_number(1, 10);
        p.accept(1, n, 0, Vec::new());
        p.run_until(|p| p.incoming[1].2.len() > 50_000, 20_000);
        p.nodes[1]
            .file_control(p.now, &pk0, FileNumber::incoming(n), FileCommand::Kill)
            .expect("kill");
        p.run_until(
            |p| {
                p.events.iter().any(|(i, e)| {
                    *i == 0
                        && matches!(
                            e,
                            FileEvent::Control {
                                control: PeerControl::Kill,
                                ..
                            }
                        )
                })
            },
            5_000,
        );
        assert!(p.nodes[0].file_transfers().is_empty());
        assert!(p.nodes[1].file_transfers().is_empty());
    }

    #[test]
    fn many_files_and_zero_size_and_offline() {
        let mut p = Pair::new();
        let mut expect = Vec::new();
        for k in 0..20u8 {
            let d = pattern(10_000 + usize::from(k) * 3_000, k);
            p.send(0, d.clone(), 100 + k);
            expect.push(d);
        }
        p.send(0, Vec::new(), 200);
        for k in 0..20u8 {
            let n = p.recv_number(1, 100 + k);
            p.accept(1, n, 0, Vec::new());
        }
        let z = p.recv_number(1, 200);
        p.accept(1, z, 0, Vec::new());
        p.run_until(|p| p.incoming.iter().all(|r| r.3), 50_000);
        for (k, d) in expect.iter().enumerate() {
            assert_eq!(&p.incoming[k].2, d);
        }
        assert!(p.incoming[20].2.is_empty());

        // Friend offline: transfers break on both sides and can be offered again.
        p.answer_chunks = false;
        p.send(0, pattern(100_000, 9), 50);
        let n = p.recv_number(1, 50);
        p.accept(1, n, 0, Vec::new());
        for _ in 0..50 {
            p.step();
        }
        let pk1 = p.keys[1];
        p.nodes[0].session_down(p.now, pk1);
        p.step();
        assert!(p.events.iter().any(|(i, e)| *i == 0
            && matches!(
                e,
                FileEvent::Broken {
                    file: FileNumber {
                        direction: FileDirection::Outgoing,
                        ..
                    },
                    ..
                }
            )));
        assert!(p.nodes[0].file_transfers().is_empty());
    }

    #[test]
    #[ignore = "measurement: virtual-time rate of one transfer over an ideal link"]
    fn virtual_time_rate() {
        let mut p = Pair::new();
        let data = pattern(40 << 20, 5);
        p.send(0, data, 3);
        let n = p.recv_number(1, 3);
        let t0 = p.now;
        p.accept(1, n, 0, Vec::new());
        let mut last = 0;
        for s in 0..60 {
            p.run_until(
                |p| p.incoming[0].3 || p.now >= t0 + Duration::from_secs(s + 1),
                2_000_000,
            );
            let got = p.incoming[0].2.len();
            let st = p.nodes[0]
                .crypto
                .session_state(&p.keys[1])
                .expect("session");
            eprintln!(
                "t={:>2}s {:>6.2} MiB/s  send_rate {:>8.0} pkt/s  queue {}  cwnd {:.0}",
                s + 1,
                (got - last) as f64 / 1048576.0,
                st.send_rate,
                st.send_queue,
                st.cwnd
            );
            last = got;
            if p.incoming[0].3 {
                break;
            }
        }
    }

    #[test]
    fn bad_controls_are_refused_or_killed() {
        let mut p = Pair::new();
        let pk1 = p.keys[1];
        let n = p.send(0, pattern(5000, 1), 1);
        // The sender cannot accept its own offer.
        assert_eq!(
            p.nodes[0].file_control(p.now, &pk1, FileNumber::outgoing(n), FileCommand::Accept),
            Err(NodeError::FileState("only the receiver accepts an offer"))
        );
        assert_eq!(
            p.nodes[0].file_control(p.now, &pk1, FileNumber::incoming(77), FileCommand::Accept),
            Err(NodeError::NoSuchFile)
        );
        // A control for a file the receiver does not have is answered with a kill.
        let pk0 = p.keys[0];
        let pk =
            p.nodes[1]
                .crypto
                .send_lossless(p.now, &pk0, &ctl(false, 99, FileControlKind::Pause));
        assert!(pk.is_ok());
        for _ in 0..20 {
            p.step();
        }
        let m = p.recv_number(1, 1);
        // Seek after accept is refused.
        p.accept(1, m, 0, Vec::new());
        assert!(p.nodes[1].file_seek(p.now, &pk0, m, 10).is_err());
    }
}
