//! What the transaction callbacks of `backstop` and `notify` share.

use std::cell::Cell;
use std::thread::LocalKey;

use pgrx::pg_sys;

/// Registers a transaction and a subtransaction callback, once per backend
/// (`registered` remembers it); they live as long as the backend.
pub fn register_callbacks_once(
    registered: &'static LocalKey<Cell<bool>>,
    on_xact: pg_sys::XactCallback,
    on_subxact: pg_sys::SubXactCallback,
) {
    if registered.with(Cell::get) {
        return;
    }
    // SAFETY: registered once per backend, with callbacks that live as
    // long as it.
    unsafe {
        pg_sys::RegisterXactCallback(on_xact, std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(on_subxact, std::ptr::null_mut());
    }
    registered.with(|r| r.set(true));
}

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
