//! Group sync: one fsync (or `Db::flush`) made durable for every caller
//! whose write finished before it started.
//!
//! Concurrent uploads each need their directory entry and their metadata
//! commit durable before they are acknowledged. Syncing them one by one
//! costs one device flush each; but a sync that *starts* after a write has
//! finished covers that write, whoever asked for it. So a caller first
//! notes its write ([`GroupSync::written`], a ticket), and then asks for a
//! sync covering the ticket ([`GroupSync::sync`]): if a sync that started
//! after the write already finished, it returns at once; if one is running,
//! it waits for it and then checks again; otherwise it runs one itself and
//! covers every write noted before it began. With `k` uploads committing
//! together, the device sees about two syncs instead of `k`.
//!
//! A failed sync is **sticky**: after an fsync error the kernel may have
//! dropped the dirty pages it could not write, so a later fsync that
//! succeeds proves nothing about them (the "fsyncgate" lesson). Every
//! later [`GroupSync::sync`] fails too, and the service must be restarted
//! (which re-reads and re-verifies the store) before it acknowledges
//! writes again.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use sesphr_domain::DomainError;

/// Proof that a write was noted; pass it to [`GroupSync::sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a noted write is durable only after `sync` with its ticket"]
pub(crate) struct Ticket(u64);

#[derive(Default)]
struct State {
    /// Writes noted so far.
    written: u64,
    /// Every write with a ticket up to this one is durable.
    durable: u64,
    /// A sync is running.
    syncing: bool,
    /// Why the store can no longer promise durability.
    failed: Option<String>,
    /// Syncs run so far.
    syncs: u64,
}

/// Coalesces the syncs of one file, directory or database.
pub(crate) struct GroupSync {
    /// What is synced, for error messages.
    what: &'static str,
    state: Mutex<State>,
    done: Condvar,
}

impl GroupSync {
    pub(crate) fn new(what: &'static str) -> Self {
        GroupSync {
            what,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere
        // does not make it wrong.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a write that has finished (its bytes handed to the kernel or
    /// to sled). Any sync that starts after this returns covers it.
    pub(crate) fn written(&self) -> Ticket {
        let mut st = self.lock();
        st.written += 1;
        Ticket(st.written)
    }

    /// Returns once the write behind `ticket` is durable: after a sync
    /// (`sync_now`, run by this caller or by another) that started after
    /// the write was noted. Never returns `Ok` after any sync failed.
    pub(crate) fn sync<F>(&self, ticket: Ticket, sync_now: F) -> Result<(), DomainError>
    where
        F: FnOnce() -> Result<(), DomainError>,
    {
        let mut st = self.lock();
        loop {
            if let Some(why) = &st.failed {
                return Err(self.failed(why));
            }
            if st.durable >= ticket.0 {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        // This caller syncs, for every write noted so far.
        st.syncing = true;
        let covers = st.written;
        drop(st);
        let result = sync_now();
        let mut st = self.lock();
        st.syncing = false;
        st.syncs += 1;
        let r = match result {
            // Only a sync sets `failed`, and none ran beside this one, which
            // started with `failed` unset.
            Ok(()) => {
                st.durable = st.durable.max(covers);
                Ok(())
            }
            // This caller gets the error itself; everyone after it, the
            // refusal that names it.
            Err(e) => {
                tracing::error!(what = self.what, error = %e, "a sync failed; no write is acknowledged from now on");
                st.failed = Some(e.to_string());
                Err(e)
            }
        };
        drop(st);
        self.done.notify_all();
        r
    }

    fn failed(&self, why: &str) -> DomainError {
        DomainError::files(format!(
            "{}: an earlier sync failed ({why}); restart the service before it accepts writes again",
            self.what
        ))
    }

    /// Syncs run so far.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn a_lone_write_gets_its_own_sync() {
        let g = GroupSync::new("test");
        let t = g.written();
        let runs = AtomicU64::new(0);
        g.sync(t, || {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        // Already covered: no second sync.
        g.sync(t, || panic!("synced twice")).unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A later write needs a later sync.
        let t2 = g.written();
        assert!(t2 > t);
        g.sync(t2, || {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Concurrent writers share syncs, and every one of them returns only
    /// after a sync that started after its write.
    #[test]
    fn concurrent_writers_share_syncs_that_started_after_their_writes() {
        const WRITERS: u64 = 16;
        const ROUNDS: u64 = 20;
        let g = Arc::new(GroupSync::new("test"));
        // Highest ticket written, and highest ticket a finished sync saw
        // written when it started.
        let written = Arc::new(AtomicU64::new(0));
        let covered = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (g, written, covered) = (g.clone(), written.clone(), covered.clone());
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        let t = g.written();
                        written.fetch_max(t.0, Ordering::SeqCst);
                        g.sync(t, || {
                            let saw = written.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                            covered.fetch_max(saw, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(
                            covered.load(Ordering::SeqCst) >= t.0,
                            "ticket {} returned before a sync covered it",
                            t.0
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let syncs = g.syncs();
        assert!(
            syncs < WRITERS * ROUNDS,
            "{syncs} syncs for {} writes: nothing was shared",
            WRITERS * ROUNDS
        );
    }

    #[test]
    fn a_failed_sync_fails_every_later_one() {
        let g = GroupSync::new("records directory");
        let t = g.written();
        let e = g
            .sync(t, || Err(DomainError::files("EIO".to_string())))
            .unwrap_err();
        assert!(e.to_string().contains("EIO"), "{e}");
        // Even a sync that would succeed now is refused: the pages the
        // failed one could not write may be gone.
        let t2 = g.written();
        let e = g.sync(t2, || Ok(())).unwrap_err();
        assert!(e.to_string().contains("restart the service"), "{e}");
        assert!(g.sync(t, || Ok(())).is_err());
    }
}
