-- pg_dialpad 0.2.0 -> 0.2.1: a security release (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.2.1'" to load this file. \quit

-- Redelivery keys are bounded and name the source (src/domain/webhook.rs dedupe_key): keys
-- stored by 0.2.0 stay as they are; a redelivery of such an event is still caught by the
-- processor from the call's history.
COMMENT ON COLUMN dialpad.webhook_events.dedupe_key IS 'call_id/state/event_timestamp@source (numbers in one canonical spelling; @source for a delivery through a webhook source), set on insert when all three are in the payload: deliveries with the same key are one event (Dialpad redelivers). A key past 200 bytes is call_id/# and a SHA-256 of its parts.';
