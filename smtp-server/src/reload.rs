//! Settings re-read while the server runs (`smtpd` on SIGHUP): certificates,
//! user lists, credentials. Each is a [`Swap`] cell that readers snapshot,
//! and a [`Reload`] that re-reads its source and swaps the new value in
//! whole, or keeps the old one when the source fails to load.
//!
//! A server's [`Reloader`] runs every registered [`Reload`]: the adapters'
//! server handles call it (`reload()`), and `smtpd` calls it on SIGHUP.
//! A value is taken when it is used: a TLS handshake takes the
//! certificates, an AUTH the user list, an upstream connection the relay
//! credentials. So a session in progress keeps its TLS session (and an
//! upstream connection its login), and its next AUTH or upstream
//! connection uses the new values.
//!
//! ```
//! use std::sync::Arc;
//! use smtp_server::reload::{FileReload, Reloader, Swap};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("greeting");
//! std::fs::write(&path, "hello").unwrap();
//! let cell = Arc::new(Swap::new(String::new()));
//! let file = FileReload::new("greeting", &path, cell.clone(), |p| {
//!     std::fs::read_to_string(p).map_err(|e| e.to_string())
//! });
//! let reloader = Reloader::default().with(Arc::new(file));
//! assert!(reloader.reload().is_ok());
//! assert_eq!(*cell.get(), "hello");
//! std::fs::remove_file(&path).unwrap();
//! // A source that fails keeps the old value, and says why.
//! assert!(reloader.reload().is_err());
//! assert_eq!(*cell.get(), "hello");
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// A value replaced in whole, atomically: readers take an `Arc` snapshot
/// ([`Swap::get`]) that stays valid while they use it, whatever replaces it.
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Swap(RwLock::new(Arc::new(value)))
    }

    /// A shared cell holding `value` (the form settings take it in).
    pub fn shared(value: T) -> Arc<Self> {
        Arc::new(Swap::new(value))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value; readers holding the old one keep it.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

impl<T: fmt::Debug> fmt::Debug for Swap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Swap").field(&self.get()).finish()
    }
}

/// Something a server re-reads on request.
pub trait Reload: Send + Sync + fmt::Debug {
    /// Re-reads the source and swaps the new value in; on an error, the
    /// old value stays and the error says what failed (one line).
    fn reload(&self) -> Result<(), String>;
}

type Reader<T> = Box<dyn Fn(&Path) -> Result<T, String> + Send + Sync>;

/// A file read into a [`Swap`] cell on every reload.
pub struct FileReload<T> {
    what: &'static str,
    path: PathBuf,
    cell: Arc<Swap<T>>,
    read: Reader<T>,
}

impl<T> FileReload<T> {
    /// Re-reads `path` with `read` into `cell`; `what` names the file in errors.
    pub fn new(
        what: &'static str,
        path: impl Into<PathBuf>,
        cell: Arc<Swap<T>>,
        read: impl Fn(&Path) -> Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        FileReload {
            what,
            path: path.into(),
            cell,
            read: Box::new(read),
        }
    }
}

impl<T> fmt::Debug for FileReload<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileReload")
            .field("what", &self.what)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync> Reload for FileReload<T> {
    fn reload(&self) -> Result<(), String> {
        let value = (self.read)(&self.path).map_err(|e| {
            format!(
                "{} {}: {e}; keeping the old one",
                self.what,
                self.path.display()
            )
        })?;
        self.cell.set(value);
        Ok(())
    }
}

/// Every [`Reload`] of a server, run in order by [`Reloader::reload`].
/// Cheap to clone; the adapters' server handles hold one.
#[derive(Clone, Default, Debug)]
pub struct Reloader(Arc<Vec<Arc<dyn Reload>>>);

impl Reloader {
    /// Adds `r` to the list.
    pub fn with(self, r: Arc<dyn Reload>) -> Self {
        let mut all = Vec::clone(&self.0);
        all.push(r);
        Reloader(Arc::new(all))
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every reload, each whatever the others did; logs and returns
    /// the failures (their sources keep their old values). Reloads run
    /// one at a time (a SIGHUP and a `ServerHandle::reload` that overlap
    /// would otherwise let the slower one put back what it read before
    /// the faster one's newer files).
    pub fn reload(&self) -> Result<(), Vec<String>> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let errors: Vec<String> = self.0.iter().filter_map(|r| r.reload().err()).collect();
        for e in &errors {
            tracing::error!("reload failed: {e}");
        }
        if errors.is_empty() {
            tracing::info!(sources = self.0.len(), "reloaded");
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn readers_keep_their_snapshot() {
        let cell = Swap::new(1);
        let old = cell.get();
        cell.set(2);
        assert_eq!((*old, *cell.get()), (1, 2));
    }

    #[derive(Debug)]
    struct Fails;
    impl Reload for Fails {
        fn reload(&self) -> Result<(), String> {
            Err("no".into())
        }
    }

    #[test]
    fn one_failure_does_not_stop_the_others() {
        let cell = Arc::new(Swap::new(0u32));
        let c = cell.clone();
        let counter = FileReload::new("n", "x", cell.clone(), move |_| Ok(c.get().as_ref() + 1));
        let r = Reloader::default()
            .with(Arc::new(Fails))
            .with(Arc::new(counter));
        assert_eq!(r.reload(), Err(vec!["no".to_string()]));
        assert_eq!(*cell.get(), 1);
        assert!(!r.is_empty() && Reloader::default().is_empty());
    }
}
