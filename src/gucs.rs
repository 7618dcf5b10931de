//! Every `dialpad.*` setting, defined in one place with typed accessors.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvalidTransition {
    /// Keep the row as it was, warn, and record the attempt in dialpad.rejected_transitions.
    Skip,
    /// Raise check_violation.
    Error,
}

pub static INVALID_TRANSITION: GucSetting<InvalidTransition> =
    GucSetting::<InvalidTransition>::new(InvalidTransition::Skip);

pub fn init() {
    GucRegistry::define_enum_guc(
        c"dialpad.invalid_transition",
        c"What an invalid call status transition does: skip (keep the row, warn, record it) or error.",
        c"With skip, the write leaves the row as it was, raises a WARNING and records the attempt in dialpad.rejected_transitions. With error, it raises check_violation (SQLSTATE 23514).",
        &INVALID_TRANSITION,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn invalid_transition() -> InvalidTransition {
    INVALID_TRANSITION.get()
}
