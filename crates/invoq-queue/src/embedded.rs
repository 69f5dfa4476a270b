//! The embedded backend: every queue in one redb database (`<data-dir>/queue.redb`).
//!
//! Why redb: a maintained, pure-Rust, crash-safe B-tree store with ACID transactions and
//! fsync on commit, so a 202 can wait for real durability without us writing a log format,
//! its recovery and its compaction. Its cost, one fsync per commit, is paid once per batch:
//! a single writer thread takes every pending command, applies all that must be durable in
//! one write transaction and commits once (group commit), so throughput follows batch size,
//! not fsync latency.
//!
//! Layout:
//! - `messages`: (queue, seq) → id, enqueue time and body. `seq` grows with every enqueue,
//!   so the first key of a queue is its oldest item.
//! - `schedule`: (queue, visible_at_ms, seq) → receive count. Leasing an item moves its key
//!   to the lease's expiry, so an expired lease is simply visible again, after a restart too.
//! - `meta`: the next `seq`.
//!
//! A receipt names the schedule key it leased (`seq.visible_at_ms`); once the item is leased
//! again its key moves and the old receipt is lost. Leases and their extensions are
//! committed without fsync, in a transaction of their own ahead of the batch's durable one:
//! losing one in a crash only makes the item visible again, which at-least-once delivery
//! allows, and a worker asking for work does not wait for the disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{EventQueue, Lease, PeekLimit, QueueError, QueueItem, QueueStats, now_ms};

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const SCHEDULE: TableDefinition<(&str, u64, u64), u32> = TableDefinition::new("schedule");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

/// Commands taken into one write transaction at most.
const MAX_BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct EmbeddedQueueOptions {
    /// Plain enqueues are refused past this many items in the target queue.
    pub max_depth: u64,
    /// Bytes of database pages redb keeps in memory. redb's own default is 1 GiB, which a
    /// queue of a million events fills; a queue touches mostly its head and tail, so a small
    /// cache costs little speed and keeps the process small.
    pub cache_bytes: usize,
}

impl Default for EmbeddedQueueOptions {
    fn default() -> Self {
        EmbeddedQueueOptions {
            max_depth: 1_000_000,
            cache_bytes: 32 << 20,
        }
    }
}

/// Queues in a redb database, on disk or in memory.
#[derive(Clone)]
pub struct EmbeddedQueue {
    shared: Arc<Shared>,
}

struct Shared {
    /// The open database; `None` while the writer reopens it after a storage failure.
    db: DatabaseSlot,
    /// False from a failed commit until the database has been reopened.
    healthy: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<Command>,
    /// Woken after every commit that made items visible.
    enqueued: Notify,
    depths: Arc<Mutex<HashMap<String, u64>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Shared {
    /// Closes the command channel and waits for the writer to finish its batch, so the
    /// database is closed (and may be opened again) when the last handle is gone.
    fn drop(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(writer) = self.writer.lock().expect("writer handle poisoned").take() {
            let _ = writer.join();
        }
    }
}

impl EmbeddedQueue {
    /// Opens (or creates) the database at `path`. After a failed commit (a full disk, an
    /// I/O error) redb refuses every write until the database is opened again; the writer
    /// does that by itself, as soon as opening works, and answers errors until then.
    pub fn open(path: &Path, options: EmbeddedQueueOptions) -> Result<Self, QueueError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(storage)?;
        }
        let db = open_file(path, &options)?;
        Self::start(db, options, Some(path.to_path_buf()))
    }

    /// The same engine, in memory: nothing survives the process.
    pub fn in_memory(options: EmbeddedQueueOptions) -> Result<Self, QueueError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Self::start(db, options, None)
    }

    fn start(
        db: Database,
        options: EmbeddedQueueOptions,
        path: Option<PathBuf>,
    ) -> Result<Self, QueueError> {
        let depths = Arc::new(Mutex::new(initial_depths(&db)?));
        let db: DatabaseSlot = Arc::new(RwLock::new(Some(Arc::new(db))));
        let healthy = Arc::new(AtomicBool::new(true));
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            db: db.clone(),
            healthy: healthy.clone(),
            commands,
            enqueued: Notify::new(),
            depths,
            writer: Mutex::new(None),
        });
        let writer = Writer {
            db,
            path,
            healthy,
            options,
            depths: shared.depths.clone(),
            shared: Arc::downgrade(&shared),
        };
        let handle = std::thread::Builder::new()
            .name("invoq-queue-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(storage)?;
        *shared.writer.lock().expect("writer handle poisoned") = Some(handle);
        Ok(EmbeddedQueue { shared })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Command,
    ) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(make(reply))
            .map_err(|_| QueueError::Storage("queue writer stopped".into()))?;
        answer
            .await
            .map_err(|_| QueueError::Storage("queue writer stopped".into()))?
    }
}

#[async_trait]
impl EventQueue for EmbeddedQueue {
    async fn enqueue(
        &self,
        queue: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let queue = queue.to_owned();
        self.call(|reply| Command::Enqueue {
            queue,
            item,
            delay,
            limited: true,
            reply,
        })
        .await
    }

    async fn lease(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so an enqueue in between is not missed.
            let enqueued = self.shared.enqueued.notified();
            tokio::pin!(enqueued);
            enqueued.as_mut().enable();
            let queue_name = queue.to_owned();
            let (leases, next_visible_ms) = self
                .call(|reply| Command::Lease {
                    queue: queue_name,
                    max,
                    visibility,
                    reply,
                })
                .await?;
            let now = tokio::time::Instant::now();
            if !leases.is_empty() || now >= deadline {
                return Ok(leases);
            }
            let mut wake_at = deadline;
            if let Some(next_visible_ms) = next_visible_ms {
                let until = Duration::from_millis(next_visible_ms.saturating_sub(now_ms()));
                wake_at = wake_at.min(now + until);
            }
            tokio::select! {
                _ = enqueued => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease, QueueError> {
        let lease = lease.clone();
        self.call(|reply| Command::Extend {
            lease,
            visibility,
            reply,
        })
        .await
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let lease = lease.clone();
        self.call(|reply| Command::Settle {
            lease,
            then: None,
            reply,
        })
        .await
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        let lease = lease.clone();
        self.call(|reply| Command::Nack {
            lease,
            delay,
            reply,
        })
        .await
    }

    async fn settle_and_enqueue(
        &self,
        lease: &Lease,
        target: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let lease = lease.clone();
        let then = Some((target.to_owned(), item, delay));
        self.call(|reply| Command::Settle { lease, then, reply })
            .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let depth = self
            .shared
            .depths
            .lock()
            .expect("depths poisoned")
            .get(queue)
            .copied();
        let oldest = self
            .peek_raw(queue, PeekLimit::items(1))
            .await?
            .into_iter()
            .next();
        Ok(QueueStats {
            depth: depth.unwrap_or(0),
            oldest_age: oldest.map(|(enqueued_at_ms, _)| {
                Duration::from_millis(now_ms().saturating_sub(enqueued_at_ms))
            }),
        })
    }

    /// False from a failed commit until the database has been reopened.
    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    async fn peek(&self, queue: &str, limit: PeekLimit) -> Result<Vec<QueueItem>, QueueError> {
        Ok(self
            .peek_raw(queue, limit)
            .await?
            .into_iter()
            .map(|(_, item)| item)
            .collect())
    }
}

impl EmbeddedQueue {
    async fn peek_raw(
        &self,
        queue: &str,
        limit: PeekLimit,
    ) -> Result<Vec<(u64, QueueItem)>, QueueError> {
        let db = current(&self.shared.db)?;
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || {
            let read = db.begin_read().map_err(storage)?;
            let messages = match read.open_table(MESSAGES) {
                Ok(messages) => messages,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(storage(error)),
            };
            let mut items = Vec::new();
            let mut bytes = 0;
            for entry in messages
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))
                .map_err(storage)?
            {
                let (_, value) = entry.map_err(storage)?;
                // The stored size bounds the body's: checked before anything is decoded.
                let size = value.value().len();
                if !limit.admits(items.len(), bytes, size) {
                    break;
                }
                bytes += size;
                items.push(decode_message(value.value())?);
            }
            Ok(items)
        })
        .await
        .map_err(storage)?
    }
}

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

enum Command {
    Enqueue {
        queue: String,
        item: QueueItem,
        delay: Duration,
        limited: bool,
        reply: Reply<()>,
    },
    Lease {
        queue: String,
        max: usize,
        visibility: Duration,
        reply: Reply<(Vec<Lease>, Option<u64>)>,
    },
    Extend {
        lease: Lease,
        visibility: Duration,
        reply: Reply<Lease>,
    },
    Nack {
        lease: Lease,
        delay: Duration,
        reply: Reply<()>,
    },
    /// Ack, optionally followed by an enqueue in the same transaction.
    Settle {
        lease: Lease,
        then: Option<(String, QueueItem, Duration)>,
        reply: Reply<()>,
    },
}

impl Command {
    /// Whether the command changes what must survive a crash.
    fn needs_fsync(&self) -> bool {
        !matches!(self, Command::Lease { .. } | Command::Extend { .. })
    }
}

struct Writer {
    db: DatabaseSlot,
    /// The database file, to reopen it after a failed commit (`None`: in memory).
    path: Option<PathBuf>,
    healthy: Arc<AtomicBool>,
    options: EmbeddedQueueOptions,
    depths: Arc<Mutex<HashMap<String, u64>>>,
    shared: std::sync::Weak<Shared>,
}

/// A command's answer, held back until the transaction that carries it has committed.
type PendingReply = Box<dyn FnOnce(Option<QueueError>) + Send>;

impl Writer {
    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if !self.healthy.load(Ordering::Relaxed) && !self.reopen() {
                let error = QueueError::Storage(
                    "queue storage failed and is not writable again yet; nothing was stored".into(),
                );
                for command in batch.drain(..) {
                    command.fail(error.clone());
                }
                continue;
            }
            self.commit_batch(&mut batch);
        }
    }

    /// Opens the database file again after a failed commit; true once it is open.
    fn reopen(&mut self) -> bool {
        let Some(path) = self.path.clone() else {
            return false;
        };
        let old = self.db.write().expect("database slot poisoned").take();
        if let Some(old) = old {
            // Readers (peeks) hold clones for a moment; redb opens a file only once.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        match open_file(&path, &self.options).and_then(|db| {
            let depths = initial_depths(&db)?;
            Ok((db, depths))
        }) {
            Ok((db, depths)) => {
                *self.depths.lock().expect("depths poisoned") = depths;
                *self.db.write().expect("database slot poisoned") = Some(Arc::new(db));
                self.healthy.store(true, Ordering::Relaxed);
                tracing::info!(path = %path.display(), "queue storage writable again");
                true
            }
            Err(error) => {
                tracing::debug!(%error, "queue storage still failing");
                false
            }
        }
    }

    /// Commits a batch as up to two transactions: leases and extensions first, without
    /// fsync, so that a worker asking for work does not wait for the disk; then everything
    /// that must survive a crash, with one fsync for all of it.
    fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        let (durable, quick): (Vec<Command>, Vec<Command>) =
            batch.drain(..).partition(Command::needs_fsync);
        if !quick.is_empty() {
            self.commit(quick, Durability::None);
        }
        if !durable.is_empty() {
            self.commit(durable, Durability::Immediate);
        }
    }

    fn commit(&mut self, commands: Vec<Command>, durability: Durability) {
        let made_visible = commands.iter().any(Command::makes_visible);
        let mut commands = commands.into_iter();
        let mut depth_changes: HashMap<String, i64> = HashMap::new();
        let mut replies: Vec<PendingReply> = Vec::with_capacity(commands.len());
        let db = current(&self.db);
        let result = (|| -> Result<(), QueueError> {
            let mut transaction = db?.begin_write().map_err(storage)?;
            transaction.set_durability(durability).map_err(storage)?;
            {
                let mut tables = Tables::open(&transaction)?;
                for command in commands.by_ref() {
                    replies.push(self.apply(&mut tables, command, &mut depth_changes)?);
                }
                // Leases and acks take no sequence numbers; leaving `meta` untouched spares
                // their transactions a table write.
                if tables.next_seq != tables.first_seq {
                    tables
                        .meta
                        .insert(NEXT_SEQ, tables.next_seq)
                        .map_err(storage)?;
                }
            }
            transaction.commit().map_err(storage)
        })();
        match result {
            Ok(()) => {
                let mut depths = self.depths.lock().expect("depths poisoned");
                for (queue, change) in depth_changes {
                    let depth = depths.entry(queue).or_insert(0);
                    *depth = depth.saturating_add_signed(change);
                }
                drop(depths);
                for reply in replies {
                    reply(None);
                }
                if made_visible && let Some(shared) = self.shared.upgrade() {
                    shared.enqueued.notify_waiters();
                }
            }
            Err(error) => {
                tracing::error!(%error, "queue commit failed");
                // redb refuses writes after a failed commit until it is reopened; a file
                // can be, the next time commands arrive.
                if self.path.is_some() {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                for reply in replies {
                    reply(Some(error.clone()));
                }
                // Commands the failed transaction never reached get the error too.
                for command in commands {
                    command.fail(error.clone());
                }
            }
        }
    }

    /// Applies one command. A command's own failure (lease lost, queue full) is answered
    /// without failing the batch; a storage failure fails the whole transaction.
    fn apply(
        &self,
        tables: &mut Tables<'_>,
        command: Command,
        depth_changes: &mut HashMap<String, i64>,
    ) -> Result<PendingReply, QueueError> {
        let now = now_ms();
        Ok(match command {
            Command::Enqueue {
                queue,
                item,
                delay,
                limited,
                reply,
            } => {
                let depth = self.depth(&queue, depth_changes);
                if limited && depth >= self.options.max_depth {
                    let error = QueueError::Full { queue, depth };
                    return Ok(Box::new(move |_| {
                        let _ = reply.send(Err(error));
                    }));
                }
                tables.insert(&queue, &item, now, now + millis(delay))?;
                *depth_changes.entry(queue).or_default() += 1;
                answer(reply, ())
            }
            Command::Lease {
                queue,
                max,
                visibility,
                reply,
            } => {
                let mut due = Vec::new();
                for entry in tables
                    .schedule
                    .range((queue.as_str(), 0, 0)..=(queue.as_str(), now, u64::MAX))
                    .map_err(storage)?
                {
                    let (key, receives) = entry.map_err(storage)?;
                    let (_, visible_at, seq) = key.value();
                    due.push((visible_at, seq, receives.value()));
                    if due.len() >= max {
                        break;
                    }
                }
                let expires = now + millis(visibility);
                let mut leases = Vec::with_capacity(due.len());
                for (visible_at, seq, receives) in due {
                    tables
                        .schedule
                        .remove((queue.as_str(), visible_at, seq))
                        .map_err(storage)?;
                    let message = tables
                        .messages
                        .get((queue.as_str(), seq))
                        .map_err(storage)?;
                    // A schedule entry without its message has nothing to deliver: drop it.
                    let Some(message) = message else { continue };
                    let (enqueued_at_ms, item) = decode_message(message.value())?;
                    drop(message);
                    tables
                        .schedule
                        .insert((queue.as_str(), expires, seq), receives + 1)
                        .map_err(storage)?;
                    leases.push(Lease {
                        queue: queue.clone(),
                        item,
                        receipt: receipt(seq, expires),
                        receive_count: receives + 1,
                        enqueued_at_ms,
                    });
                }
                let next_visible = tables
                    .schedule
                    .range((queue.as_str(), now + 1, 0)..=(queue.as_str(), u64::MAX, u64::MAX))
                    .map_err(storage)?
                    .next()
                    .transpose()
                    .map_err(storage)?
                    .map(|(key, _)| key.value().1);
                answer(reply, (leases, next_visible))
            }
            Command::Extend {
                lease,
                visibility,
                reply,
            } => match tables.take_lease(&lease)? {
                Err(error) => answer_err(reply, error),
                Ok((seq, receives)) => {
                    let expires = now + millis(visibility);
                    tables
                        .schedule
                        .insert((lease.queue.as_str(), expires, seq), receives)
                        .map_err(storage)?;
                    answer(
                        reply,
                        Lease {
                            receipt: receipt(seq, expires),
                            ..lease
                        },
                    )
                }
            },
            Command::Nack {
                lease,
                delay,
                reply,
            } => match tables.take_lease(&lease)? {
                Err(error) => answer_err(reply, error),
                Ok((seq, receives)) => {
                    let visible_at = now + millis(delay);
                    tables
                        .schedule
                        .insert((lease.queue.as_str(), visible_at, seq), receives)
                        .map_err(storage)?;
                    answer(reply, ())
                }
            },
            Command::Settle { lease, then, reply } => {
                let (seq, _) = match tables.take_lease(&lease)? {
                    Ok(taken) => taken,
                    // Acking an item that is gone succeeds; a hand-off from a lost lease must
                    // not happen, or the outcome would exist twice.
                    Err(error) => {
                        let gone = tables
                            .messages
                            .get((lease.queue.as_str(), parse_receipt(&lease.receipt)?.0))
                            .map_err(storage)?
                            .is_none();
                        return Ok(if gone && then.is_none() {
                            answer(reply, ())
                        } else {
                            answer_err(reply, error)
                        });
                    }
                };
                tables
                    .messages
                    .remove((lease.queue.as_str(), seq))
                    .map_err(storage)?;
                *depth_changes.entry(lease.queue.clone()).or_default() -= 1;
                if let Some((target, item, delay)) = then {
                    tables.insert(&target, &item, now, now + millis(delay))?;
                    *depth_changes.entry(target).or_default() += 1;
                }
                answer(reply, ())
            }
        })
    }

    fn depth(&self, queue: &str, pending: &HashMap<String, i64>) -> u64 {
        let committed = self
            .depths
            .lock()
            .expect("depths poisoned")
            .get(queue)
            .copied()
            .unwrap_or(0);
        committed.saturating_add_signed(pending.get(queue).copied().unwrap_or(0))
    }
}

impl Command {
    fn fail(self, error: QueueError) {
        match self {
            Command::Enqueue { reply, .. }
            | Command::Nack { reply, .. }
            | Command::Settle { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Lease { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Extend { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Whether the command may make items visible that a long poll waits for.
    fn makes_visible(&self) -> bool {
        matches!(
            self,
            Command::Enqueue { .. } | Command::Nack { .. } | Command::Settle { then: Some(_), .. }
        )
    }
}

fn answer<T: Send + 'static>(reply: Reply<T>, value: T) -> PendingReply {
    Box::new(move |failure| {
        let _ = reply.send(match failure {
            None => Ok(value),
            Some(error) => Err(error),
        });
    })
}

fn answer_err<T: Send + 'static>(reply: Reply<T>, error: QueueError) -> PendingReply {
    Box::new(move |failure| {
        let _ = reply.send(Err(failure.unwrap_or(error)));
    })
}

struct Tables<'txn> {
    messages: Table<'txn, (&'static str, u64), &'static [u8]>,
    schedule: Table<'txn, (&'static str, u64, u64), u32>,
    meta: Table<'txn, &'static str, u64>,
    /// `next_seq` as the transaction found it.
    first_seq: u64,
    next_seq: u64,
}

impl<'txn> Tables<'txn> {
    fn open(transaction: &'txn WriteTransaction) -> Result<Self, QueueError> {
        let meta = transaction.open_table(META).map_err(storage)?;
        let next_seq = meta
            .get(NEXT_SEQ)
            .map_err(storage)?
            .map(|seq| seq.value())
            .unwrap_or(1);
        Ok(Tables {
            messages: transaction.open_table(MESSAGES).map_err(storage)?,
            schedule: transaction.open_table(SCHEDULE).map_err(storage)?,
            meta,
            first_seq: next_seq,
            next_seq,
        })
    }

    fn insert(
        &mut self,
        queue: &str,
        item: &QueueItem,
        now: u64,
        visible_at: u64,
    ) -> Result<(), QueueError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.messages
            .insert((queue, seq), encode_message(now, item).as_slice())
            .map_err(storage)?;
        self.schedule
            .insert((queue, visible_at, seq), 0)
            .map_err(storage)?;
        Ok(())
    }

    /// Removes the schedule entry a lease holds: `(seq, receive count)`, or why it cannot.
    fn take_lease(&mut self, lease: &Lease) -> Result<Result<(u64, u32), QueueError>, QueueError> {
        let (seq, expires) = parse_receipt(&lease.receipt)?;
        let removed = self
            .schedule
            .remove((lease.queue.as_str(), expires, seq))
            .map_err(storage)?;
        Ok(match removed {
            Some(receives) => Ok((seq, receives.value())),
            None => Err(QueueError::LeaseLost {
                receipt: lease.receipt.clone(),
            }),
        })
    }
}

fn initial_depths(db: &Database) -> Result<HashMap<String, u64>, QueueError> {
    let read = db.begin_read().map_err(storage)?;
    let mut depths = HashMap::new();
    let messages = match read.open_table(MESSAGES) {
        Ok(messages) => messages,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(depths),
        Err(error) => return Err(storage(error)),
    };
    for entry in messages.iter().map_err(storage)? {
        let (key, _) = entry.map_err(storage)?;
        *depths.entry(key.value().0.to_owned()).or_insert(0) += 1;
    }
    Ok(depths)
}

fn receipt(seq: u64, expires_ms: u64) -> String {
    format!("{seq}.{expires_ms}")
}

fn parse_receipt(receipt: &str) -> Result<(u64, u64), QueueError> {
    receipt
        .split_once('.')
        .and_then(|(seq, expires)| Some((seq.parse().ok()?, expires.parse().ok()?)))
        .ok_or_else(|| QueueError::LeaseLost {
            receipt: receipt.to_owned(),
        })
}

/// `[enqueued_at_ms: u64][id length: u16][id][body]`, little-endian.
fn encode_message(enqueued_at_ms: u64, item: &QueueItem) -> Vec<u8> {
    let id = item.id.as_bytes();
    let mut bytes = Vec::with_capacity(10 + id.len() + item.body.len());
    bytes.extend_from_slice(&enqueued_at_ms.to_le_bytes());
    bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(&item.body);
    bytes
}

fn decode_message(bytes: &[u8]) -> Result<(u64, QueueItem), QueueError> {
    let corrupt = || QueueError::Storage("corrupt queue message".into());
    let enqueued_at_ms = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    );
    let id_len = u16::from_le_bytes(
        bytes
            .get(8..10)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let id = bytes.get(10..10 + id_len).ok_or_else(corrupt)?;
    let id = String::from_utf8(id.to_vec()).map_err(|_| corrupt())?;
    let body = Bytes::copy_from_slice(&bytes[10 + id_len..]);
    Ok((enqueued_at_ms, QueueItem { id, body }))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2)
}

type DatabaseSlot = Arc<RwLock<Option<Arc<Database>>>>;

fn current(slot: &DatabaseSlot) -> Result<Arc<Database>, QueueError> {
    slot.read()
        .expect("database slot poisoned")
        .clone()
        .ok_or_else(|| QueueError::Storage("queue storage is being reopened".into()))
}

fn open_file(path: &Path, options: &EmbeddedQueueOptions) -> Result<Database, QueueError> {
    Database::builder()
        .set_cache_size(options.cache_bytes)
        .create(path)
        .map_err(storage)
}

fn storage(error: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(error.to_string())
}
