//! Session threads, kept for the next connection: starting a thread per
//! connection costs about fifteen system calls (clone, stack mmap and
//! guard page, signal stack, munmap at exit), half of a short session's.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    closed: bool,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    ready: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cached thread pool: a job goes to an idle thread if there is one, or
/// to a new thread; a thread idle for `keep` ends. There are never more
/// threads than jobs running plus idle ones, so the connection limit
/// bounds it.
pub(crate) struct Pool {
    inner: Arc<Inner>,
    keep: Duration,
}

impl Pool {
    pub(crate) fn new(keep: Duration) -> Pool {
        Pool {
            inner: Arc::default(),
            keep,
        }
    }

    /// Runs `job` on a pooled thread.
    pub(crate) fn execute(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let job: Job = Box::new(job);
        {
            let mut st = self.inner.lock();
            if st.idle > st.jobs.len() {
                st.jobs.push_back(job);
                drop(st);
                self.inner.ready.notify_one();
                return Ok(());
            }
        }
        let (inner, keep) = (self.inner.clone(), self.keep);
        std::thread::Builder::new()
            .name("smtp-session".into())
            .spawn(move || worker(&inner, job, keep))
            .map(drop)
    }

    /// Ends the idle threads now (busy ones end after their job).
    pub(crate) fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.ready.notify_all();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

fn worker(inner: &Inner, mut job: Job, keep: Duration) {
    loop {
        job();
        let mut st = inner.lock();
        st.idle += 1;
        let until = Instant::now() + keep;
        job = loop {
            if let Some(next) = st.jobs.pop_front() {
                st.idle -= 1;
                break next;
            }
            let now = Instant::now();
            if st.closed || now >= until {
                st.idle -= 1;
                return;
            }
            st = inner
                .ready
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn reuses_an_idle_thread_and_lets_it_go() {
        let pool = Pool::new(Duration::from_millis(200));
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        pool.execute(move || t.send(std::thread::current().id()).unwrap_or(()))
            .expect("spawn");
        let first = rx.recv().expect("ran");
        // Wait until the thread is idle, then the next job runs on it.
        while pool.inner.lock().idle == 0 {
            std::thread::yield_now();
        }
        let t = tx.clone();
        pool.execute(move || t.send(std::thread::current().id()).unwrap_or(()))
            .expect("queued");
        assert_eq!(rx.recv().expect("ran"), first);
        // Idle past `keep`: the thread ends (waited for, not timed: a
        // loaded machine may run it late).
        let give_up = Instant::now() + Duration::from_secs(30);
        while pool.inner.lock().idle > 0 {
            assert!(Instant::now() < give_up, "the idle thread never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn busy_threads_mean_new_threads() {
        let pool = Pool::new(Duration::from_secs(10));
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        for _ in 0..4 {
            let (tx, gate) = (tx.clone(), gate.clone());
            pool.execute(move || {
                tx.send(std::thread::current().id()).unwrap_or(());
                let (open, cv) = &*gate;
                let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
                while !*open {
                    open = cv.wait(open).unwrap_or_else(|e| e.into_inner());
                }
            })
            .expect("spawn");
        }
        let ids: std::collections::HashSet<_> = (0..4).map(|_| rx.recv().expect("ran")).collect();
        assert_eq!(ids.len(), 4, "four jobs at once run on four threads");
        *gate.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        gate.1.notify_all();
        while pool.inner.lock().idle < 4 {
            std::thread::yield_now();
        }
        pool.close();
        while pool.inner.lock().idle > 0 {
            std::thread::yield_now();
        }
    }
}
