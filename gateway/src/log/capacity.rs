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
