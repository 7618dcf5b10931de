-- Runs last: function comments, pinned search_path, privileges.

COMMENT ON FUNCTION dialpad.normalize_call_direction(text) IS
    'inbound/incoming/in -> inbound, outbound/outgoing/out -> outbound (any case, whitespace ignored); anything else -> NULL with a WARNING.';
COMMENT ON FUNCTION dialpad.is_valid_status_transition(text, text) IS
    'True when a call may move from current to next status per dialpad.status_transitions. NULL current (a new call) -> any known status; same status -> true; nothing leaves a terminal status; unknown or NULL next -> false.';
COMMENT ON FUNCTION dialpad.status_transition_error(text, text) IS
    'NULL when the transition is valid, otherwise a message naming both statuses and why (terminal, unknown, or not allowed).';
COMMENT ON FUNCTION dialpad.sanitize_call_payload(jsonb, integer, integer, integer, integer, integer, integer) IS
    'A size-bounded copy of a payload: transcripts cut at max_transcript_length characters, other strings at max_string_length, binary data removed, arrays cut to max_array_items plus a marker, nested objects over max_object_keys summarized, values deeper than max_depth replaced. Idempotent.';
COMMENT ON FUNCTION dialpad.version_info() IS 'pg_dialpad version and build information.';
COMMENT ON FUNCTION dialpad.calls_before_write() IS
    'Trigger on dialpad.calls: stores the direction normalized and enforces dialpad.status_transitions (see dialpad.invalid_transition).';
COMMENT ON FUNCTION dialpad.webhook_events_before_insert() IS
    'Trigger on dialpad.webhook_events: fills event_type and call_id from the payload; never rejects a payload.';
COMMENT ON FUNCTION dialpad.wake_workers_on_insert() IS
    'Trigger on dialpad.webhook_events: wakes the background workers when the inserting transaction commits.';
COMMENT ON FUNCTION dialpad.process_events(integer) IS
    'Claims up to max_events due events (FOR UPDATE SKIP LOCKED, arrival order), applies them to dialpad.calls and marks them, in the caller''s transaction; returns how many it handled. Safe to run from any number of sessions at once.';
COMMENT ON FUNCTION dialpad.worker_status() IS
    'Whether the launcher and each background worker run, and if not, why and what to do.';
COMMENT ON FUNCTION dialpad.worker_stats() IS
    'Per-worker counters from shared memory (behind the dialpad.worker_stats view).';
COMMENT ON FUNCTION dialpad.processed_last_minute() IS
    'Events handled by any processor in the last 60 seconds; NULL without shared_preload_libraries.';
COMMENT ON FUNCTION dialpad.wake_workers() IS
    'Wakes the background workers when the current transaction commits.';
COMMENT ON FUNCTION dialpad.rules_changed() IS
    'Trigger on the rule tables: makes every session reload the rules from its next statement.';

-- Every function of the extension runs with a fixed search_path, whatever the caller's.
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'dialpad'::pg_catalog.regnamespace
           AND p.proconfig IS NULL
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$$;

-- The rules are not secret: any role may read them (the functions read them as the caller).
GRANT USAGE ON SCHEMA dialpad TO PUBLIC;
GRANT SELECT ON dialpad.call_statuses, dialpad.status_transitions, dialpad.state_mapping TO PUBLIC;
