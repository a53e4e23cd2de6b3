//! The shutdown phase, broadcast from the accept loop to session threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use smtp_server::accept::Stop;

#[derive(Default)]
struct Inner {
    /// Wakers of sessions blocked in a hook, by session key.
    wakers: HashMap<u64, Waker>,
    next: u64,
    /// Sessions not yet ended.
    sessions: usize,
}

/// The server's [`Stop`] phase and its live sessions.
#[derive(Default)]
pub(crate) struct StopBus {
    phase: AtomicU8,
    inner: Mutex<Inner>,
    idle: Condvar,
}

impl StopBus {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn phase(&self) -> Stop {
        match self.phase.load(Ordering::Acquire) {
            0 => Stop::Run,
            1 => Stop::Drain,
            _ => Stop::Abort,
        }
    }

    /// Moves to phase `stop` and wakes the sessions waiting on a hook.
    pub(crate) fn set(&self, stop: Stop) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            self.phase.store(stop as u8, Ordering::Release);
            inner.wakers.drain().map(|(_, w)| w).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Waits up to `limit` for every session to end; returns whether they did.
    pub(crate) fn wait_idle(&self, limit: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .idle
            .wait_timeout_while(inner, limit, |i| i.sessions > 0)
            .unwrap_or_else(|e| e.into_inner());
        inner.sessions == 0
    }

    pub(crate) fn sessions(&self) -> usize {
        self.lock().sessions
    }
}

/// One session's view of a [`StopBus`]; counts as a live session until dropped.
pub(crate) struct Waiter {
    bus: Arc<StopBus>,
    key: u64,
}

impl Waiter {
    pub(crate) fn new(bus: &Arc<StopBus>) -> Waiter {
        let mut inner = bus.lock();
        inner.sessions += 1;
        inner.next += 1;
        Waiter {
            bus: bus.clone(),
            key: inner.next,
        }
    }

    pub(crate) fn phase(&self) -> Stop {
        self.bus.phase()
    }

    /// The server's bus (to watch its phase without counting as a session).
    pub(crate) fn bus(&self) -> &Arc<StopBus> {
        &self.bus
    }

    /// Whether the server aborts; if not, wakes `cx` when it does.
    pub(crate) fn poll_abort(&self, cx: &Context<'_>) -> bool {
        let mut inner = self.bus.lock();
        if self.bus.phase() == Stop::Abort {
            return true;
        }
        inner.wakers.insert(self.key, cx.waker().clone());
        false
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.bus.lock();
        inner.wakers.remove(&self.key);
        inner.sessions -= 1;
        if inner.sessions == 0 {
            self.bus.idle.notify_all();
        }
    }
}
