//! The daemon in the test's own process: [`earlywarn::daemon::run`] on a
//! runtime of its own, started, reloaded and stopped through its
//! [`Controls`](earlywarn::daemon::Controls) instead of signals. For tests
//! where the process boundary is not what is tested: they assert on files,
//! mail and the database, never on the log (there is none to read).

use std::path::{Path, PathBuf};
use std::time::Duration;

use earlywarn::daemon::{Controls, DaemonError, ReloadReason};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// A daemon running in this process. Stopped on drop.
pub struct InProcess {
    /// Its own runtime (two workers, as `earlywarn run` has), so the test stays
    /// synchronous and a panic in the test cannot leave the daemon running.
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
    shutdown: CancellationToken,
    ready: CancellationToken,
    reload: UnboundedSender<ReloadReason>,
    config: PathBuf,
}

impl InProcess {
    /// Loads `config_path` and starts the daemon on it; see [`Self::wait_ready`].
    pub fn start(config_path: &Path) -> InProcess {
        let config = earlywarn::config::Config::load(config_path)
            .unwrap_or_else(|e| panic!("load {}: {e}", config_path.display()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        let (controls, reload) = Controls::new();
        let (shutdown, ready) = (controls.shutdown.clone(), controls.ready.clone());
        let task = runtime.spawn(earlywarn::daemon::run(config, controls));
        InProcess {
            runtime: Some(runtime),
            task: Some(task),
            shutdown,
            ready,
            reload,
            config: config_path.to_path_buf(),
        }
    }

    /// [`Self::start`], then waits until it is ready (files already waiting read,
    /// the first clock tick done).
    pub fn start_ready(config_path: &Path) -> InProcess {
        let d = InProcess::start(config_path);
        d.wait_ready(Duration::from_secs(20));
        d
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Waits until the daemon says it is ready; panics if it stops or the time runs out.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.ready.is_cancelled() {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("the daemon stopped before it was ready");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon was not ready within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks for a reload, as SIGHUP does.
    pub fn reload(&self) {
        self.reload
            .send("a test")
            .expect("the daemon is still running");
    }

    /// Stops it and returns what `run` returned (waiting up to 20 s).
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.finish()
            .expect("the daemon did not stop within 20 s of being told to")
    }

    fn finish(&mut self) -> Option<Result<(), DaemonError>> {
        self.shutdown.cancel();
        let runtime = self.runtime.take()?;
        let task = self.task.take()?;
        let result =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
        // Tasks `run` left behind (the metrics server) go with the runtime.
        runtime.shutdown_timeout(Duration::from_secs(5));
        match result {
            Ok(Ok(r)) => Some(r),
            Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            Err(_) => None,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.finish();
        } else if let Some(runtime) = self.runtime.take() {
            self.shutdown.cancel();
            runtime.shutdown_background();
        }
    }
}
