//! The batch: claim due events, fold them per call, write the calls, mark the events, all
//! in the caller's transaction; with what it needs around it (the rules cache, the call-row
//! codec, the redelivery lookup of the insert trigger, the tables a batch works on); and the
//! flush of the ingest counters.

pub(crate) mod batch;
pub(crate) mod call_row;
pub(crate) mod counters;
pub(crate) mod dedupe;
pub(crate) mod inflight;
pub(crate) mod logical;
pub(crate) mod rederive;
pub(crate) mod rules;
pub(crate) mod sources;
pub(crate) mod tables;
