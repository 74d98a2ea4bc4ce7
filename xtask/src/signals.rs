//! The signals that end a command: SIGINT (Ctrl-C), SIGTERM (what `timeout`,
//! `kill` and CI runners send) and SIGHUP (a closed terminal). All three get
//! the same orderly teardown.

use std::sync::{LazyLock, Mutex, PoisonError};

use tokio::signal::unix::{Signal, SignalKind, signal};

struct Handlers {
    int: Signal,
    term: Signal,
    hup: Signal,
}

/// The process's handlers, installed once and handed from one wait to the
/// next (a handler stays registered for the life of the process).
static HANDLERS: LazyLock<Mutex<Option<Handlers>>> = LazyLock::new(|| {
    let handlers = (|| {
        Some(Handlers {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    })();
    Mutex::new(handlers)
});

/// The name of the next of those signals to arrive; `None` if the handlers
/// could not be installed or another wait holds them.
pub async fn next() -> Option<&'static str> {
    let mut h = HANDLERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()?;
    let name = tokio::select! {
        _ = h.int.recv() => "SIGINT",
        _ = h.term.recv() => "SIGTERM",
        _ = h.hup.recv() => "SIGHUP",
    };
    *HANDLERS.lock().unwrap_or_else(PoisonError::into_inner) = Some(h);
    Some(name)
}
