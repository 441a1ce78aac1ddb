//! The CPU work of `LocalHsm`'s operations runs off the async workers: while one operation
//! computes, the runtime that called it goes on serving others (here a single-threaded runtime,
//! where work done inline would stop everything until it ends).

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use hsm_api::{Error, Hsm, HsmState};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use tokio::sync::mpsc as async_mpsc;

/// The hand-shake of the one armed self-test: it says it started, then waits to be released.
struct Armed {
    started: async_mpsc::UnboundedSender<()>,
    release: mpsc::Receiver<()>,
}

static ARMED: Mutex<Option<Armed>> = Mutex::new(None);

/// A self-test that, when armed, computes "forever": until the test releases it. Released by
/// nobody (the work ran inline, so the test could not go on), it gives up and fails.
fn blocking_self_test() -> hsm_api::Result<()> {
    let Some(armed) = ARMED.lock().unwrap().take() else {
        return Ok(());
    };
    armed.started.send(()).unwrap();
    armed
        .release
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| Error::SelfTest("never released: the caller's runtime was blocked".into()))
}

#[tokio::test(flavor = "current_thread")]
async fn an_operation_in_progress_does_not_stop_the_callers_runtime() {
    let hsm = std::sync::Arc::new(
        LocalHsm::open(LocalHsmConfig {
            dangerous_test_lmk: true,
            self_test: blocking_self_test,
            ..LocalHsmConfig::default()
        })
        .unwrap(),
    );
    let (started_tx, mut started) = async_mpsc::unbounded_channel();
    let (release, release_rx) = mpsc::channel();
    *ARMED.lock().unwrap() = Some(Armed {
        started: started_tx,
        release: release_rx,
    });
    let running = tokio::spawn({
        let hsm = std::sync::Arc::clone(&hsm);
        async move { hsm.self_test().await }
    });
    started.recv().await.unwrap();
    // The self-test is computing; this runtime's only worker still serves other callers.
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Operational);
    let other = tokio::spawn(async { "served" });
    assert_eq!(other.await.unwrap(), "served");
    assert!(!running.is_finished());
    release.send(()).unwrap();
    running.await.unwrap().unwrap();
}
