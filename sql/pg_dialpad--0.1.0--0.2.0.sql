-- pg_dialpad 0.1.0 -> 0.2.0. Run by ALTER EXTENSION pg_dialpad UPDATE, after the 0.2.0
-- library is installed and the server restarted (README, "Upgrading"). Everything here is
-- schema-qualified and changes no stored payload; it keeps every event, call and rule.

-- The 0.2.0 library must be the one loaded: with preload, that takes a restart.
DO $$
BEGIN
    IF dialpad.version_info() NOT LIKE 'pg_dialpad 0.2.0 %' THEN
        RAISE EXCEPTION 'pg_dialpad 0.2.0 needs its 0.2.0 library, but this session runs %', dialpad.version_info()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Install the 0.2.0 files, restart PostgreSQL (the library is preloaded), then run ALTER EXTENSION pg_dialpad UPDATE again.';
    END IF;
END
$$;

-- Redeliveries are kept in the audit log, marked duplicate_of their first delivery, instead
-- of making the INSERT fail: the (call_id, dedupe_key) index stops being unique.
ALTER TABLE dialpad.webhook_events ADD COLUMN duplicate_of bigint;
COMMENT ON COLUMN dialpad.webhook_events.dedupe_key IS 'call_id/state/event_timestamp (numbers in one canonical spelling), set on insert when all three are in the payload: deliveries with the same key are one event (Dialpad redelivers).';
COMMENT ON COLUMN dialpad.webhook_events.duplicate_of IS 'Set on a redelivery: the id of the first delivery of the same event. Kept in the audit log, never applied.';
DROP INDEX dialpad.webhook_events_call_dedupe;
CREATE INDEX webhook_events_call_dedupe ON dialpad.webhook_events (call_id, dedupe_key);

COMMENT ON FUNCTION dialpad.ingest_webhook(text) IS
    'Stores one webhook delivery (the raw body: plain JSON, or an HS256 JWT when dialpad.webhook_secret is set) and returns the id of its first delivery; a redelivery of the same call_id/state/event_timestamp is kept marked duplicate_of that id and never applied again. Errors: 22P02 malformed JSON or token, 28000 bad signature/algorithm or JWT/secret mismatch, 54000 body over dialpad.max_body_size, 22023 stale event.';
COMMENT ON FUNCTION dialpad.webhook_events_before_insert() IS
    'Trigger on dialpad.webhook_events: fills event_type, call_id and dedupe_key from the payload and marks a redelivery duplicate_of its first delivery; never rejects a payload.';

GRANT SELECT (duplicate_of) ON dialpad.webhook_events TO dialpad_ingest;
GRANT UPDATE (duplicate_of) ON dialpad.webhook_events TO dialpad_worker;

-- DROP EXTENSION while the workers run and sessions ingest (src/drop_guard.rs).
CREATE FUNCTION dialpad.before_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'dialpad_before_drop';
ALTER FUNCTION dialpad.before_drop() SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dialpad.before_drop() IS
    'Event trigger: before DROP EXTENSION pg_dialpad (or DROP SCHEMA dialpad), pauses the workers and locks the extension''s tables in the order every writer locks them, so the drop succeeds at once.';
CREATE EVENT TRIGGER dialpad_before_drop ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION dialpad.before_drop();
