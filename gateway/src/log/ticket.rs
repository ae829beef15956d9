//! The append handle's completion: resolves once the batch is durable.
//!
//! Usable both as a `Future` (ingest paths on an async runtime) and by
//! blocking on it (`wait`, for threads and tests); the log itself stays free of
//! any runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::error::AppendError;
use super::types::Offset;

/// Where an acknowledged batch landed: offsets `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: Offset,
    pub count: u32,
}

pub type AppendResult = Result<Appended, AppendError>;

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<AppendResult>,
    waker: Option<Waker>,
}

/// Returned by `Log::append`; resolves to the batch's offsets once durable.
pub struct AppendTicket(Arc<Slot>);

/// The writer's half. Dropping it unresolved resolves the ticket with
/// `AppendError::Closed`, so no waiter hangs if the writer goes away.
pub struct Completer(Option<Arc<Slot>>);

pub fn pair() -> (AppendTicket, Completer) {
    let slot = Arc::new(Slot::default());
    (AppendTicket(slot.clone()), Completer(Some(slot)))
}

impl Completer {
    pub fn complete(mut self, result: AppendResult) {
        if let Some(slot) = self.0.take() {
            resolve(&slot, result);
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            resolve(&slot, Err(AppendError::Closed));
        }
    }
}

fn resolve(slot: &Slot, result: AppendResult) {
    let waker = {
        let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.result = Some(result);
        state.waker.take()
    };
    slot.ready.notify_all();
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl AppendTicket {
    /// Blocks the calling thread until the batch is durable (or failed).
    pub fn wait(self) -> AppendResult {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            state = self
                .0
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Future for AppendTicket {
    type Output = AppendResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AppendResult> {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
