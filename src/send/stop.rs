//! A stop token for graceful shutdown: the first request stops starting calls; callers count
//! requests so a second one (a second SIGINT) can abort at once. And the kill switch's place:
//! [`stop_file`] is the one builder of the `STOP` file's path (the engine and the daemon both
//! look for it there).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

/// Cloneable; every clone sees the same requests.
#[derive(Clone, Debug)]
pub struct StopToken {
    tx: Arc<watch::Sender<u32>>,
}

impl Default for StopToken {
    fn default() -> Self {
        Self::new()
    }
}

impl StopToken {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(0);
        StopToken { tx: Arc::new(tx) }
    }

    /// Ask to stop; returns how many times stop has now been asked.
    pub fn stop(&self) -> u32 {
        let mut n = 0;
        self.tx.send_modify(|v| {
            *v += 1;
            n = *v;
        });
        n
    }

    /// Has stop been asked?
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow() > 0
    }

    /// Resolves once stop has been asked.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v > 0).await;
    }
}

/// The kill switch's file name: while `<state dir>/STOP` exists every run and the daemon pause.
pub const STOP_FILE: &str = "STOP";

/// `<state_dir>/STOP` (see [`STOP_FILE`]).
pub fn stop_file(state_dir: &Path) -> PathBuf {
    state_dir.join(STOP_FILE)
}
