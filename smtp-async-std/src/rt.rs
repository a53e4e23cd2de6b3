//! The runtime-specific bits (spawning) and small runtime-neutral helpers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_io::Timer;
use event_listener::Event;
use futures_lite::FutureExt;
use smtp_server::accept::{Stop, StopSignal, StopWatch};

#[cfg(not(any(feature = "smol", feature = "async-std")))]
compile_error!("smtp-async-std needs a runtime: enable the `smol` or the `async-std` feature");

/// `f`, or `None` once `d` has passed.
pub(crate) async fn timeout<F: Future>(d: Duration, f: F) -> Option<F::Output> {
    async { Some(f.await) }
        .or(async {
            Timer::after(d).await;
            None
        })
        .await
}

/// Where session tasks go: smol's global executor (or the one given to
/// `Server::executor`), else async-std's.
#[derive(Clone, Default)]
pub(crate) struct Spawner {
    #[cfg(feature = "smol")]
    pub(crate) executor: Option<Arc<smol::Executor<'static>>>,
}

impl Spawner {
    /// Runs `fut` in a detached task.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        #[cfg(feature = "smol")]
        match &self.executor {
            Some(ex) => ex.spawn(fut).detach(),
            None => smol::spawn(fut).detach(),
        }
        #[cfg(all(feature = "async-std", not(feature = "smol")))]
        drop(async_std::task::spawn(fut));
    }
}

/// What a server tells its sessions (the [`Stop`] phase, and a final kill),
/// and how many session tasks are alive.
#[derive(Debug, Default)]
pub(crate) struct Control {
    stop: Arc<StopSignal>,
    killed: AtomicBool,
    live: AtomicUsize,
    changed: Event,
}

impl Control {
    pub(crate) fn set_stop(&self, s: Stop) {
        self.stop.set(s);
        self.changed.notify(usize::MAX);
    }

    /// A session's watch on the stop phase (no registration per wait).
    pub(crate) fn watch(&self) -> StopWatch {
        self.stop.watch()
    }

    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    pub(crate) fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Completes once `cond` holds (checked after every change).
    pub(crate) async fn until(&self, cond: impl Fn(&Self) -> bool) {
        loop {
            if cond(self) {
                return;
            }
            let listener = self.changed.listen();
            if cond(self) {
                return;
            }
            listener.await;
        }
    }
}

/// Counts one live session task while it exists.
pub(crate) struct Live(Arc<Control>);

impl Live {
    pub(crate) fn new(c: &Arc<Control>) -> Self {
        c.live.fetch_add(1, Ordering::SeqCst);
        Live(c.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify(usize::MAX);
    }
}
