//! Group commit: every change of the store (grant, revoke, check, audit
//! event) is an operation queued here, and concurrent operations are
//! written together.
//!
//! A caller queues its operation and waits on it. Whoever finds no batch
//! being written becomes the *leader*: it takes up to [`MAX_BATCH`]
//! operations from the front of the queue, runs them in queue order inside
//! **one** sled transaction (each operation decides on the state the ones
//! before it left, so the log order is the decision order), appends all
//! their entries and Merkle nodes, commits, moves the head, flushes **once**
//! and only then hands every operation its result. It goes on with the next
//! batch until its own operation is done, then passes the leadership to the
//! operation at the front of the queue, if any. Operations that arrive
//! while a batch is written queue up for the next one, so the batch grows
//! with the load and an idle store writes each operation alone at once.
//!
//! An operation only reads the transaction and stages its writes in an
//! [`OpCtx`]; the leader applies them only when the operation succeeds, so
//! an operation that fails leaves nothing behind and the others of its
//! batch commit as if it had not been there. A failure of the transaction
//! or of the flush fails every operation of the batch (nothing of it is
//! acknowledged).
//!
//! Bounded: at most [`MAX_QUEUED`] operations wait (later callers block
//! until there is room) and a batch holds at most [`MAX_BATCH`]. Nobody
//! spins: callers sleep on their operation's condition variable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::{AuditEntry, AuditEvent, DomainError, Head};

/// Most operations written in one transaction and flush.
pub const MAX_BATCH: usize = 256;
/// Most operations waiting for a batch; callers beyond wait for room.
pub const MAX_QUEUED: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a queued operation offers the leader.
pub(crate) trait Job: Send + Sync {
    /// The time its entries carry.
    fn now(&self) -> i64;
    /// Decides, inside the batch's transaction; the events to append in
    /// its place. Called once.
    fn run(&self, cx: &mut OpCtx<'_>) -> Result<Vec<AuditEvent>, DomainError>;
    /// Its result, once durable (or why not); wakes its caller.
    fn finish(&self, result: Result<Vec<AuditEntry>, DomainError>);
    /// Makes its caller the leader.
    fn lead(&self);
}

/// Writes one batch and finishes every operation in it.
pub(crate) type WriteBatch<'a> = dyn Fn(&[Arc<dyn Job>]) + 'a;

/// Each operation's entries, or its own error.
pub(crate) type BatchResults = Vec<Result<Vec<AuditEntry>, DomainError>>;

/// A body returns its caller's value and the events to append.
pub(crate) type Output<R> = Result<(R, Vec<AuditEvent>), DomainError>;

enum State<R> {
    Queued,
    Lead,
    Done(Result<(R, Vec<AuditEntry>), DomainError>),
    Taken,
}

/// One caller's operation: its body until it runs, its value until the
/// batch is durable, then its result.
pub(crate) struct Op<R, F> {
    now: i64,
    body: Mutex<Option<F>>,
    staged: Mutex<Option<R>>,
    state: Mutex<State<R>>,
    wake: Condvar,
}

impl<R, F> Op<R, F>
where
    R: Send + 'static,
    F: FnOnce(&mut OpCtx<'_>) -> Output<R> + Send + 'static,
{
    pub(crate) fn new(now: i64, body: F) -> Arc<Self> {
        Arc::new(Op {
            now,
            body: Mutex::new(Some(body)),
            staged: Mutex::new(None),
            state: Mutex::new(State::Queued),
            wake: Condvar::new(),
        })
    }

    /// Sleeps until the operation is done (`Some`) or its caller must lead
    /// (`None`).
    fn wait(&self) -> Option<Result<(R, Vec<AuditEntry>), DomainError>> {
        let mut st = lock(&self.state);
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Queued => {
                    *st = State::Queued;
                    st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                State::Lead => {
                    *st = State::Queued;
                    return None;
                }
                State::Done(r) => return Some(r),
                State::Taken => unreachable!("an operation's result is taken once"),
            }
        }
    }

    /// The result, if the operation is done.
    fn take_done(&self) -> Option<Result<(R, Vec<AuditEntry>), DomainError>> {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(r) => Some(r),
            other => {
                *st = other;
                None
            }
        }
    }
}

impl<R, F> Job for Op<R, F>
where
    R: Send + 'static,
    F: FnOnce(&mut OpCtx<'_>) -> Output<R> + Send + 'static,
{
    fn now(&self) -> i64 {
        self.now
    }

    fn run(&self, cx: &mut OpCtx<'_>) -> Result<Vec<AuditEvent>, DomainError> {
        let body = lock(&self.body)
            .take()
            .ok_or_else(|| DomainError::Conflict("an audited operation ran twice".into()))?;
        let (r, events) = body(cx)?;
        *lock(&self.staged) = Some(r);
        Ok(events)
    }

    fn finish(&self, result: Result<Vec<AuditEntry>, DomainError>) {
        let staged = lock(&self.staged).take();
        let done = match (result, staged) {
            (Ok(entries), Some(r)) => Ok((r, entries)),
            (Ok(_), None) => Err(DomainError::Conflict(
                "an audited operation finished without running".into(),
            )),
            (Err(e), _) => Err(e),
        };
        *lock(&self.state) = State::Done(done);
        self.wake.notify_one();
    }

    fn lead(&self) {
        *lock(&self.state) = State::Lead;
        self.wake.notify_one();
    }
}

struct Queue {
    jobs: VecDeque<Arc<dyn Job>>,
    /// A caller is writing batches (it, or the one it handed over to).
    leading: bool,
}

/// The queue of operations and the leader role.
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    room: Condvar,
    /// Batches written so far.
    batches: AtomicU64,
}

impl Committer {
    pub(crate) fn new() -> Self {
        Committer {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                leading: false,
            }),
            room: Condvar::new(),
            batches: AtomicU64::new(0),
        }
    }

    /// Batches written so far.
    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Operations waiting for a batch.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        lock(&self.queue).jobs.len()
    }

    /// Queues `op` and returns its result once durable. `write` writes one
    /// batch and finishes every operation in it.
    pub(crate) fn submit<R, F>(
        &self,
        op: Arc<Op<R, F>>,
        write: &WriteBatch<'_>,
    ) -> Result<(R, Vec<AuditEntry>), DomainError>
    where
        R: Send + 'static,
        F: FnOnce(&mut OpCtx<'_>) -> Output<R> + Send + 'static,
    {
        let lead_now = {
            let mut q = lock(&self.queue);
            while q.jobs.len() >= MAX_QUEUED {
                q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            q.jobs.push_back(op.clone());
            !std::mem::replace(&mut q.leading, true)
        };
        if !lead_now && let Some(r) = op.wait() {
            return r;
        }
        // Leading: write batches from the front until ours is among them.
        let mut handover = Handover {
            committer: self,
            batch: Vec::new(),
        };
        loop {
            handover.batch = {
                let mut q = lock(&self.queue);
                let n = q.jobs.len().min(MAX_BATCH);
                q.jobs.drain(..n).collect()
            };
            self.room.notify_all();
            self.batches.fetch_add(1, Ordering::Relaxed);
            write(&handover.batch);
            handover.batch.clear();
            if let Some(r) = op.take_done() {
                return r; // `handover` passes the leadership on
            }
        }
    }
}

/// Passes the leadership to the operation at the front of the queue when
/// the leader leaves, also by a panic (then the batch it held fails).
struct Handover<'a> {
    committer: &'a Committer,
    batch: Vec<Arc<dyn Job>>,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        for job in self.batch.drain(..) {
            job.finish(Err(DomainError::Conflict(
                "the audit batch was abandoned".into(),
            )));
        }
        let mut q = lock(&self.committer.queue);
        match q.jobs.front() {
            Some(next) => next.lead(),
            None => q.leading = false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Grants,
    ByGrantee,
    Deny,
}

/// An operation's view of the batch's transaction: reads see the batch's
/// earlier operations and its own staged writes; writes are staged and
/// applied only if the operation succeeds. Also the coalescing state.
pub(crate) struct OpCtx<'a> {
    grants: &'a TransactionalTree,
    by_grantee: &'a TransactionalTree,
    deny: &'a TransactionalTree,
    pub(crate) head: &'a mut Head,
    writes: Vec<(Which, Vec<u8>, Option<Vec<u8>>)>,
}

fn storage(e: UnabortableTransactionError) -> DomainError {
    match e {
        UnabortableTransactionError::Storage(e) => e.into(),
        UnabortableTransactionError::Conflict => {
            DomainError::Conflict("the audit transaction conflicted".into())
        }
    }
}

impl<'a> OpCtx<'a> {
    pub(crate) fn new(
        grants: &'a TransactionalTree,
        by_grantee: &'a TransactionalTree,
        deny: &'a TransactionalTree,
        head: &'a mut Head,
    ) -> Self {
        OpCtx {
            grants,
            by_grantee,
            deny,
            head,
            writes: Vec::new(),
        }
    }

    /// The stored grant value under `key`.
    pub(crate) fn grant(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DomainError> {
        if let Some((_, _, v)) = self
            .writes
            .iter()
            .rev()
            .find(|(w, k, _)| *w == Which::Grants && k == key)
        {
            return Ok(v.clone());
        }
        Ok(self.grants.get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    /// The stored deny-list value under `key` (see `crate::deny`).
    pub(crate) fn deny_entry(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DomainError> {
        if let Some((_, _, v)) = self
            .writes
            .iter()
            .rev()
            .find(|(w, k, _)| *w == Which::Deny && k == key)
        {
            return Ok(v.clone());
        }
        Ok(self.deny.get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    pub(crate) fn put_deny_entry(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.writes.push((Which::Deny, key, value));
    }

    pub(crate) fn put_grant(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((Which::Grants, key, Some(value)));
    }

    pub(crate) fn remove_grant(&mut self, key: Vec<u8>) {
        self.writes.push((Which::Grants, key, None));
    }

    pub(crate) fn put_index(&mut self, key: Vec<u8>) {
        self.writes.push((Which::ByGrantee, key, Some(Vec::new())));
    }

    pub(crate) fn remove_index(&mut self, key: Vec<u8>) {
        self.writes.push((Which::ByGrantee, key, None));
    }

    pub(crate) fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Applies the staged writes to the transaction.
    pub(crate) fn apply(self) -> Result<(), UnabortableTransactionError> {
        for (which, k, v) in self.writes {
            let tree = match which {
                Which::Grants => self.grants,
                Which::ByGrantee => self.by_grantee,
                Which::Deny => self.deny,
            };
            match v {
                Some(v) => tree.insert(k, v)?,
                None => tree.remove(k)?,
            };
        }
        Ok(())
    }
}

/// The same error again, for each operation of a failed batch (the type
/// is not `Clone`: it may hold the backend's error).
pub(crate) fn again(e: &DomainError) -> DomainError {
    use DomainError as E;
    match e {
        E::BadName(n) => E::BadName(n.clone()),
        E::Malformed(s) => E::Malformed(s.clone()),
        E::Unknown(s) => E::Unknown(s.clone()),
        E::Exists(s) => E::Exists(s.clone()),
        E::NotEntitled(s) => E::NotEntitled(s.clone()),
        E::Conflict(s) => E::Conflict(s.clone()),
        E::UsedUp(s) => E::UsedUp(s.clone()),
        E::Corrupt(s) => E::Corrupt(s.clone()),
        E::Backend(b) => E::Backend(sesphr_domain::BackendError::Sled(b.to_string().into())),
        E::BadCredentials(s) => E::BadCredentials(s.clone()),
        E::Unavailable(s) => E::Unavailable(s.clone()),
    }
}
