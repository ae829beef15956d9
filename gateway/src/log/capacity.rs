//! Waiting for room in the writer's queue, without a runtime and without
//! polling.
//!
//! [`Log::append`](super::Log::append) refuses with
//! [`AppendError::Overloaded`](super::AppendError::Overloaded) while more than
//! `max_pending_bytes` wait for the writer. A source that would rather wait
//! awaits [`Capacity`]: its waker is registered here, and the writer wakes
//! every registered waker each time it takes requests off the queue (and
//! when it stops), so the source tries again exactly when room may exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Shared;

/// Wakers of sources waiting for room.
#[derive(Default)]
pub(crate) struct Waiters {
    /// Set while `wakers` may be non-empty, so the writer's common case
    /// (nobody waiting) costs one atomic load.
    any: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Waiters {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.any.store(true, Ordering::Release);
    }

    /// Wakes everyone waiting (the writer took requests, or stopped).
    pub fn wake_all(&self) {
        if !self.any.swap(false, Ordering::AcqRel) {
            return;
        }
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Resolves once the writer's queue has room, or the log can take no more
/// writes at all (then the next append says why).
pub struct Capacity {
    pub(crate) shared: Arc<Shared>,
}

impl Future for Capacity {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.has_room() {
            return Poll::Ready(());
        }
        self.shared.capacity.register(cx.waker());
        // Checked again after registering: a wake in between is not lost.
        if self.shared.has_room() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Resolves once records became readable after the `published` count
/// `seen` (see [`Log::appended_after`](super::Log::appended_after)).
pub struct Appended {
    pub(crate) shared: Arc<Shared>,
    pub(crate) seen: u64,
}

impl Appended {
    fn moved(&self) -> bool {
        self.shared.published.load(Ordering::Acquire) != self.seen
    }
}

impl Future for Appended {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.moved() {
            return Poll::Ready(());
        }
        self.shared.appended.register(cx.waker());
        // Checked again after registering: a publish in between is not lost.
        if self.moved() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::task::Wake;
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::tests::{sim_disk, small_config};
    use super::super::{AppendError, FsyncPolicy, Log, Partition, Record};
    use super::*;

    /// Counts its wakes and reports each on a channel.
    struct Flag(AtomicUsize, Mutex<mpsc::Sender<()>>);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            let _ = self.1.lock().unwrap().send(());
        }
    }

    fn record() -> Record {
        Record {
            timestamp_ms: 1,
            key: None,
            value: Bytes::from_static(b"reading"),
            headers: Vec::new(),
        }
    }

    #[test]
    fn an_overloaded_append_hands_its_records_back_and_the_writer_wakes_the_waiter() {
        let log = Log::open(Arc::new(sim_disk(7)), small_config(1, FsyncPolicy::Always)).unwrap();
        let limit = log.shared.config.max_pending_bytes;
        // A backlog the writer has not taken yet.
        log.shared.pending_bytes.store(limit + 1, Ordering::SeqCst);
        let records = vec![record()];
        let Err((AppendError::Overloaded, back)) =
            log.try_append("t", Partition(0), records.clone())
        else {
            panic!("an append past max_pending_bytes must be refused as Overloaded");
        };
        assert_eq!(back, records, "the refused records come back");
        let (tx, rx) = mpsc::channel();
        let flag = Arc::new(Flag(AtomicUsize::new(0), Mutex::new(tx)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut room = std::pin::pin!(log.capacity());
        assert!(room.as_mut().poll(&mut cx).is_pending(), "no room yet");
        // The backlog drains (without a wake), and the writer takes the next
        // request: taking it must wake the waiter.
        log.shared.pending_bytes.store(0, Ordering::SeqCst);
        log.append("t", Partition(0), vec![record()])
            .unwrap()
            .wait()
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the writer woke the waiting source");
        assert!(room.as_mut().poll(&mut cx).is_ready());
        assert!(flag.0.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn a_stopped_writer_releases_every_waiter() {
        let log = Log::open(Arc::new(sim_disk(8)), small_config(1, FsyncPolicy::Always)).unwrap();
        let limit = log.shared.config.max_pending_bytes;
        log.shared.pending_bytes.store(limit + 1, Ordering::SeqCst);
        let shared = log.shared.clone();
        let (tx, rx) = mpsc::channel();
        let flag = Arc::new(Flag(AtomicUsize::new(0), Mutex::new(tx)));
        let waker = Waker::from(flag);
        let mut cx = Context::from_waker(&waker);
        let mut room = std::pin::pin!(Capacity { shared });
        assert!(room.as_mut().poll(&mut cx).is_pending());
        log.close();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the stopping writer woke the waiter");
        assert!(room.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_reader_waiting_for_new_records_is_woken_when_they_become_readable() {
        let log = Log::open(Arc::new(sim_disk(9)), small_config(1, FsyncPolicy::Always)).unwrap();
        let seen = log.published();
        let (tx, rx) = mpsc::channel();
        let flag = Arc::new(Flag(AtomicUsize::new(0), Mutex::new(tx)));
        let waker = Waker::from(flag);
        let mut cx = Context::from_waker(&waker);
        let mut appended = std::pin::pin!(log.appended_after(seen));
        assert!(
            appended.as_mut().poll(&mut cx).is_pending(),
            "nothing new yet"
        );
        log.append("t", Partition(0), vec![record()])
            .unwrap()
            .wait()
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the writer woke the reader once the record was readable");
        assert!(appended.as_mut().poll(&mut cx).is_ready());
        assert_ne!(log.published(), seen);
        assert_eq!(log.offsets("t", Partition(0)).unwrap().1 .0, 1);
    }
}
