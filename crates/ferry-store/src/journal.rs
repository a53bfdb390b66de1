//! The inbox journal: incoming messages written ahead of the database, so that the node task
//! can acknowledge a message after one `write(2)` instead of waiting for a database commit.
//!
//! # Why
//! The daemon must not acknowledge an incoming message (net_crypto's acknowledgement goes out
//! with the node task's next datagrams) before it would survive `kill -9`. A redb commit does
//! that but waits for `fsync`: 1–3 ms typically, 6–50 ms while a file transfer keeps the disk
//! busy, and the node task stood still meanwhile (issue 6: chat during a transfer). A line
//! appended to `ferry.journal` is in the kernel's page cache when `write(2)` returns, which a
//! killed process cannot lose.
//!
//! # How
//! * [`Store::journal_message`] appends `{"id": N, "message": {…}}` and a newline (one
//!   `write(2)`, no `fsync`); `N` grows by one per entry, also across restarts.
//! * [`Store::commit_journaled`] inserts a batch into the history and records the highest `N`
//!   applied (`meta` table, key `journal_applied`) in the same transaction, durably or not
//!   (a non-durable commit is visible to readers at once and costs no `fsync`).
//! * [`Store::sync_journal`] makes everything durable and empties the journal when every entry
//!   in it is applied.
//! * [`Store::open`] replays the entries above `journal_applied` (those a crash kept out of the
//!   database), commits durably and empties the journal. A torn last line (a crash during the
//!   write) ends the replay.
//!
//! What survives what: `kill -9` of the daemon loses no journaled message. A power loss or
//! kernel crash can lose the messages journaled since the last durable commit (the daemon
//! syncs within about a second of the last incoming message; see `ferry-daemon`'s chat module).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{MessageRecord, Store, StoreError};

/// Bookkeeping values: `journal_applied` → highest journal id applied to the history.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const APPLIED: &str = "journal_applied";

/// Longest journal line replayed, bytes (a message is at most a few KiB; anything longer is
/// not ours and ends the replay).
pub const MAX_JOURNAL_LINE: usize = 1 << 20;

/// An incoming message written to the journal ([`Store::journal_message`]), to be applied to the
/// history with [`Store::commit_journaled`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journaled {
    /// Journal id: 1, 2, 3…, increasing across restarts.
    pub id: u64,
    /// The message as it will be stored.
    pub message: MessageRecord,
}

/// The open journal file.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Id of the next entry.
    next_id: u64,
    /// Bytes in the file.
    len: u64,
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Db(format!("{}: {e}", path.display()))
}

/// The journal's path beside the database at `db_path` (`ferry.redb` → `ferry.journal`).
pub fn journal_path(db_path: &Path) -> PathBuf {
    db_path.with_extension("journal")
}

/// The entries of the journal at `path` in order, up to the first line that does not decode.
fn read_entries(path: &Path) -> Result<Vec<Journaled>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_JOURNAL_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(path, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            // End of file, a torn last line or an overlong one.
            break;
        }
        match serde_json::from_slice::<Journaled>(&line) {
            Ok(j) => out.push(j),
            Err(_) => break,
        }
    }
    Ok(out)
}

impl Journal {
    /// Replays the journal beside `db_path` into `db` and opens it for appending.
    pub(crate) fn open(db: &Database, db_path: &Path) -> Result<Self, StoreError> {
        let path = journal_path(db_path);
        let entries = read_entries(&path)?;
        let tx = db.begin_write()?;
        let applied = {
            let mut meta = tx.open_table(META)?;
            let applied = meta.get(APPLIED)?.map_or(0, |v| v.value());
            let mut messages = tx.open_table(crate::MESSAGES)?;
            let mut last = applied;
            for j in entries.iter().filter(|j| j.id > applied) {
                crate::insert_message(&mut messages, &j.message)?;
                last = last.max(j.id);
            }
            meta.insert(APPLIED, last)?;
            last
        };
        tx.commit()?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // Everything is durably applied now.
        file.set_len(0).map_err(|e| io_err(&path, e))?;
        Ok(Self {
            file,
            path,
            next_id: applied + 1,
            len: 0,
        })
    }
}

impl Store {
    /// Writes an incoming message to the journal (one `write(2)`, no `fsync`) and returns it
    /// with its journal id; it survives `kill -9` from now on (see the [module docs](self)).
    /// It is in the history once [`Store::commit_journaled`] applied it.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the journal cannot be written (nothing is left half-written).
    pub fn journal_message(&self, message: &MessageRecord) -> Result<Journaled, StoreError> {
        let mut j = crate::lock(&self.journal);
        let entry = Journaled {
            id: j.next_id,
            message: message.clone(),
        };
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = j.file.write_all(&line) {
            // A partial line would end every later replay: cut it off.
            let len = j.len;
            let _ = j.file.set_len(len);
            return Err(io_err(&j.path, e));
        }
        j.len += line.len() as u64;
        j.next_id += 1;
        Ok(entry)
    }

    /// Applies journaled messages to the history in one transaction, in order, and returns their
    /// sequence numbers. `durable = false` skips the `fsync` (readers see the messages at once;
    /// the journal keeps them safe from `kill -9` until [`Store::sync_journal`]). Entries already
    /// applied (id not above `journal_applied`) are skipped and get no sequence number.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure; nothing is applied then.
    pub fn commit_journaled(
        &self,
        batch: &[Journaled],
        durable: bool,
    ) -> Result<Vec<u64>, StoreError> {
        let mut tx = self.db.begin_write()?;
        if !durable {
            tx.set_durability(Durability::None)
                .map_err(|e| StoreError::Db(e.to_string()))?;
        }
        let mut seqs = Vec::with_capacity(batch.len());
        {
            let mut meta = tx.open_table(META)?;
            let mut applied = meta.get(APPLIED)?.map_or(0, |v| v.value());
            let mut messages = tx.open_table(crate::MESSAGES)?;
            for j in batch.iter() {
                if j.id <= applied {
                    continue;
                }
                seqs.push(crate::insert_message(&mut messages, &j.message)?);
                applied = j.id;
            }
            meta.insert(APPLIED, applied)?;
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// Makes every commit so far durable (one `fsync`) and empties the journal if everything in
    /// it is applied.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure (the journal is then kept).
    pub fn sync_journal(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        let applied = {
            let mut meta = tx.open_table(META)?;
            let applied = meta.get(APPLIED)?.map_or(0, |v| v.value());
            // A write, so that the commit is not empty.
            meta.insert(APPLIED, applied)?;
            applied
        };
        tx.commit()?;
        let mut j = crate::lock(&self.journal);
        if j.len > 0 && j.next_id <= applied + 1 {
            let path = j.path.clone();
            j.file.set_len(0).map_err(|e| io_err(&path, e))?;
            j.len = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Direction, MessageKind};

    fn msg(text: &str) -> MessageRecord {
        MessageRecord {
            friend: "ab".repeat(32),
            direction: Direction::In,
            kind: MessageKind::Normal,
            text: text.to_string(),
            time_ms: 1,
            delivered: true,
        }
    }

    fn texts(s: &Store) -> Vec<String> {
        s.messages(None, 0, 100)
            .expect("messages")
            .into_iter()
            .map(|(_, m)| m.text)
            .collect()
    }

    #[test]
    fn journaled_messages_survive_a_crash_before_their_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.redb");
        {
            let s = Store::open(&path).expect("open");
            let a = s.journal_message(&msg("a")).expect("journal");
            assert_eq!(s.commit_journaled(&[a], false).expect("commit"), vec![1]);
            s.journal_message(&msg("b")).expect("journal");
            s.journal_message(&msg("c")).expect("journal");
            // Dropped without committing b and c: as a killed process leaves it.
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(texts(&s), ["a", "b", "c"]);
        // Ids go on from where they were.
        let d = s.journal_message(&msg("d")).expect("journal");
        assert_eq!(d.id, 4);
        s.commit_journaled(&[d], true).expect("commit");
        drop(s);
        let s = Store::open(&path).expect("reopen");
        assert_eq!(texts(&s), ["a", "b", "c", "d"], "replayed once only");
    }

    #[test]
    fn a_batch_applied_twice_is_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("ferry.redb")).expect("open");
        let batch: Vec<_> = ["x", "y"]
            .iter()
            .map(|t| s.journal_message(&msg(t)).expect("journal"))
            .collect();
        assert_eq!(
            s.commit_journaled(&batch, false).expect("commit"),
            vec![1, 2]
        );
        assert!(s.commit_journaled(&batch, true).expect("again").is_empty());
        assert_eq!(texts(&s), ["x", "y"]);
    }

    #[test]
    fn sync_empties_the_journal_only_when_everything_is_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.redb");
        let jpath = journal_path(&path);
        let s = Store::open(&path).expect("open");
        let a = s.journal_message(&msg("a")).expect("journal");
        s.commit_journaled(&[a], false).expect("commit");
        let _b = s.journal_message(&msg("b")).expect("journal");
        s.sync_journal().expect("sync");
        assert!(
            std::fs::metadata(&jpath).expect("journal").len() > 0,
            "b is not applied yet"
        );
        drop(s);
        let s = Store::open(&path).expect("reopen");
        assert_eq!(texts(&s), ["a", "b"]);
        assert_eq!(std::fs::metadata(&jpath).expect("journal").len(), 0);
        let c = s.journal_message(&msg("c")).expect("journal");
        s.commit_journaled(&[c], false).expect("commit");
        s.sync_journal().expect("sync");
        assert_eq!(std::fs::metadata(&jpath).expect("journal").len(), 0);
    }

    #[test]
    fn a_torn_last_line_ends_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.redb");
        {
            let s = Store::open(&path).expect("open");
            s.journal_message(&msg("whole")).expect("journal");
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .expect("journal");
        f.write_all(br#"{"id":2,"message":{"friend":"ab"#)
            .expect("torn");
        drop(f);
        let s = Store::open(&path).expect("reopen");
        assert_eq!(texts(&s), ["whole"]);
        let next = s.journal_message(&msg("next")).expect("journal");
        assert_eq!(next.id, 2);
    }
}
