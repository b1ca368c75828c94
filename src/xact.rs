//! What the transaction callbacks of `backstop` and `notify` share.

use pgrx::pg_sys;

/// Whether a transaction callback's event ends the transaction here: it
/// committed, aborted, or was prepared (and so left this backend).
pub fn ends_transaction(event: pg_sys::XactEvent::Type) -> bool {
    use pg_sys::XactEvent::*;
    matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    )
}
