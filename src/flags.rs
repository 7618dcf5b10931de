//! Per-backend flags one part of the extension sets around a call and a trigger reads:
//! Rust code only, never reachable from SQL. Each is set by a function that runs a closure
//! and clears it when the closure returns or unwinds.

thread_local! {
    /// Set only by the processor (Rust code, not reachable from SQL) while it writes calls
    /// whose transitions it has already checked in event order, possibly re-deriving a
    /// status from the whole history after a late event (see pipeline/batch.rs); `calls_before_write` then leaves the transition check to it.
    static PROCESSOR_WRITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// The verified source of the delivery dialpad.ingest_webhook is storing (Rust code, not
    /// reachable from SQL): the inbox's insert trigger writes it into the row. Plain INSERTs
    /// cannot name a source unless their role may write the column (dialpad_ingest may not),
    /// so a source in the inbox is one a secret vouched for, or one a restore brought back.
    static INGEST_SOURCE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (an insert into the inbox) with `source` as the verified source of its rows.
pub(crate) fn with_source<R>(source: Option<&str>, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INGEST_SOURCE.with(|s| s.borrow_mut().take());
        }
    }
    INGEST_SOURCE.with(|s| *s.borrow_mut() = source.map(str::to_owned));
    let _reset = Reset;
    f()
}

/// Runs `f` with the transition check of `calls_before_write` delegated to the processor.
pub(crate) fn as_processor<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            PROCESSOR_WRITING.with(|w| w.set(false));
        }
    }
    PROCESSOR_WRITING.with(|w| w.set(true));
    let _reset = Reset;
    f()
}

/// Whether the processor is writing calls (inside [`as_processor`]).
pub(crate) fn processor_writing() -> bool {
    PROCESSOR_WRITING.with(|w| w.get())
}

/// The verified source of the delivery being stored (inside [`with_source`]).
pub(crate) fn ingest_source() -> Option<String> {
    INGEST_SOURCE.with(|s| s.borrow().clone())
}
