-- Runs last: function comments, pinned search_path, privileges.

COMMENT ON FUNCTION dialpad.normalize_call_direction(text) IS
    'inbound/incoming/in -> inbound, outbound/outgoing/out -> outbound (any case, whitespace ignored); anything else -> NULL with a WARNING.';
COMMENT ON FUNCTION dialpad.is_valid_status_transition(text, text) IS
    'True when a call may move from current to next status per dialpad.status_transitions. NULL current (a new call) -> any known status; same status -> true; nothing leaves a terminal status; unknown or NULL next -> false.';
COMMENT ON FUNCTION dialpad.status_transition_error(text, text) IS
    'NULL when the transition is valid, otherwise a message naming both statuses and why (terminal, unknown, or not allowed).';
COMMENT ON FUNCTION dialpad.sanitize_call_payload(jsonb, integer, integer, integer, integer, integer, integer, integer, integer) IS
    'A size-bounded copy of a payload: transcripts cut at max_transcript_length characters, other strings at max_string_length, binary data removed, arrays cut to max_array_items plus a marker, nested objects over max_object_keys summarized, values deeper than max_depth replaced, keys longer than max_key_length cut; at most max_bytes of jsonb in all (as a last resort the top level keeps the pairs that fit and lists the rest). Idempotent.';
COMMENT ON FUNCTION dialpad.version_info() IS 'pg_dialpad version and build information.';
COMMENT ON FUNCTION dialpad.partition_bounds(oid) IS
    'The bound of a partition, read from the catalog (behind dialpad.partitions): DEFAULT, or its range of received_at (MINVALUE and MAXVALUE as -infinity and infinity).';
COMMENT ON FUNCTION dialpad.calls_before_write() IS
    'Trigger on dialpad.calls: stores the direction normalized and enforces dialpad.status_transitions (see dialpad.invalid_transition); notes the logical call of each leg written or deleted.';
COMMENT ON FUNCTION dialpad.calls_after_write() IS
    'Trigger on dialpad.calls: brings the dialpad.logical_calls rows of the legs a statement wrote up to date (once per statement).';
COMMENT ON FUNCTION dialpad.webhook_events_before_insert() IS
    'Trigger on dialpad.webhook_events: fills event_type, call_id and dedupe_key from the payload and marks a redelivery duplicate_of its first delivery; never rejects a payload.';
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
COMMENT ON FUNCTION dialpad.ingest_webhook(text, text) IS
    'Stores one webhook delivery and returns the id of its first delivery; a redelivery (the same call_id/state/event_timestamp through the same source) is kept marked duplicate_of that id and never applied again. source names the webhook source (dialpad.sources) whose secrets verify the HS256 JWT body; NULL means the only source, or plain JSON when there is none. Errors: 22P02 malformed JSON or token, 28000 refused (DETAIL: bad signature, expired, not yet valid, unsupported crit, unsupported algorithm, unknown source, disabled source, unsigned body), 22023 stale event or several sources and none named, 54000 body over dialpad.max_body_size.';
COMMENT ON FUNCTION dialpad.add_source(text, text, jsonb) IS
    'Adds a webhook source: deliveries through it must be HS256 JWTs signed with secret. Call it with bind parameters so that the secret is not in the statement text. Errors: 42710 exists, 22023 bad name, empty secret or labels not an object.';
COMMENT ON FUNCTION dialpad.rotate_secret(text, text, interval) IS
    'Gives a webhook source a new secret; the old one keeps verifying until now() + overlap (default 24 hours), then stops. Errors: 42704 no such source, 22023 empty secret or negative overlap.';
COMMENT ON FUNCTION dialpad.disable_source(text) IS 'Refuses deliveries through a webhook source (28000) until dialpad.enable_source().';
COMMENT ON FUNCTION dialpad.enable_source(text) IS 'Accepts deliveries through a disabled webhook source again.';
COMMENT ON FUNCTION dialpad.drop_source(text) IS 'Removes a webhook source; events and calls keep its name.';
COMMENT ON FUNCTION dialpad.rederive_step(integer) IS
    'Re-derives up to max_calls of the calls dialpad.rederive_calls() listed (the workers call it; without workers, a dialpad_worker session may), in the caller''s transaction; returns how many left the list, 0 when none is left. Calls another processor holds stay listed. Errors: 22023 negative max_calls, 55000 library and SQL versions differ.';
COMMENT ON FUNCTION dialpad.ingest_stats() IS
    'Deliveries accepted, duplicate and rejected by dialpad.ingest_webhook in this database: those counted in dialpad.ingest_counters plus those not flushed there yet (behind the dialpad.ingest_stats view).';
COMMENT ON FUNCTION dialpad.ingest_counters_unflushed() IS
    'The deliveries of this database counted in shared memory and not yet written to dialpad.ingest_counters, by source, outcome and reason; empty without shared_preload_libraries.';
COMMENT ON FUNCTION dialpad.flush_ingest_counters() IS
    'Writes the ingest counts of shared memory to dialpad.ingest_counters now (the first background worker does it every 5 seconds and when it stops); returns how many deliveries it wrote, 0 when another session is flushing. Errors: 25006 on a hot standby.';
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

CREATE VIEW dialpad.ingest_stats WITH (security_invoker = true) AS SELECT * FROM dialpad.ingest_stats();
COMMENT ON VIEW dialpad.ingest_stats IS
    'Deliveries accepted, duplicate (stored once already) and rejected by dialpad.ingest_webhook in this database, persisted across restarts (dialpad.ingest_stats_by_source has them by source and reason).';

-- ---------------------------------------------------------------------------------------------
-- Ingest counters (docs/operations.md, "Monitoring and alerts"): dialpad.ingest_webhook counts
-- every delivery in shared memory by source, outcome and reason (src/pg/counters.rs); the
-- first worker adds those counts to this table every few seconds and when it stops, so they
-- survive restarts. The views add what is not flushed yet.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.ingest_counters (
    source     text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'rejected')),
    reason     text NOT NULL DEFAULT '' CHECK ((outcome = 'rejected') = (reason <> '')),
    count      bigint NOT NULL CHECK (count >= 0),
    since      timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, outcome, reason)
);
COMMENT ON TABLE dialpad.ingest_counters IS
    'Deliveries dialpad.ingest_webhook accepted, stored as duplicates and rejected in this database, by webhook source and rejection reason, as flushed from shared memory (every 5 seconds and when the first worker stops).';
COMMENT ON COLUMN dialpad.ingest_counters.source IS
    'The webhook source the deliveries came through (dialpad.sources); (none): no source named and none to tell; (unknown): a source name that is not configured; (overflow): counted while the shared-memory table of counters was full.';
COMMENT ON COLUMN dialpad.ingest_counters.outcome IS 'accepted (a new event), duplicate (a redelivery, stored marked duplicate_of) or rejected.';
COMMENT ON COLUMN dialpad.ingest_counters.reason IS
    'Why deliveries were rejected ('''' otherwise): the DETAIL of a 28000 refusal (bad signature, expired, not yet valid, unsupported crit, unsupported algorithm, unknown source, disabled source, unsigned body), or malformed (22P02), stale event or no source named (22023), too large (54000), null body (22004), internal error (XX000).';
COMMENT ON COLUMN dialpad.ingest_counters.count IS 'Deliveries counted.';
COMMENT ON COLUMN dialpad.ingest_counters.since IS 'When this row was first written.';
COMMENT ON COLUMN dialpad.ingest_counters.updated_at IS 'When counts were last added.';
SELECT pg_catalog.pg_extension_config_dump('dialpad.ingest_counters', '');

CREATE VIEW dialpad.ingest_stats_by_source WITH (security_invoker = true) AS
SELECT source, outcome, reason, sum(count)::bigint AS count, min(since) AS since, max(updated_at) AS updated_at
  FROM (SELECT source, outcome, reason, count, since, updated_at FROM dialpad.ingest_counters
        UNION ALL
        SELECT source, outcome, reason, count, NULL, NULL FROM dialpad.ingest_counters_unflushed()) c
 GROUP BY source, outcome, reason;
COMMENT ON VIEW dialpad.ingest_stats_by_source IS
    'Deliveries accepted, duplicate and rejected by dialpad.ingest_webhook in this database, by webhook source, outcome and rejection reason: dialpad.ingest_counters plus the counts not flushed yet (since is NULL for a row not flushed yet).';

-- ---------------------------------------------------------------------------------------------
-- Privileges. The tables belong to the extension's owner (a superuser); applications get
-- rights only through these roles. Triggers enforce the rules for every writer and are
-- ENABLE ALWAYS; only the owner could disable them, and session_replication_role is
-- superuser-only.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['dialpad_ingest', 'dialpad_reader', 'dialpad_admin', 'dialpad_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-- The rules are not secret, and the triggers read them as whoever writes dialpad.calls.
GRANT USAGE ON SCHEMA dialpad TO PUBLIC;
GRANT SELECT ON dialpad.call_statuses, dialpad.status_transitions, dialpad.state_mapping, dialpad.deleted_rules TO PUBLIC;

-- Functions that write or reveal more than their arguments are not for everyone.
REVOKE EXECUTE ON FUNCTION dialpad.ingest_webhook(text, text), dialpad.process_events(integer),
    dialpad.retry_event(bigint), dialpad.retry_dead_events(text, text, text, timestamptz, timestamptz),
    dialpad.discard_event(bigint, text), dialpad.discard_dead_events(text, text, text, text, timestamptz, timestamptz),
    dialpad.matching_dead_events(text, text, text, timestamptz, timestamptz), dialpad.wake_workers(),
    dialpad.worker_stats(), dialpad.ingest_stats(), dialpad.processed_last_minute()
    FROM PUBLIC;

-- dialpad_ingest: the web tier. Store deliveries, nothing else (the id and key columns are
-- readable so that INSERT ... RETURNING id and the duplicate lookup work).
GRANT EXECUTE ON FUNCTION dialpad.ingest_webhook(text, text), dialpad.wake_workers() TO dialpad_ingest;
GRANT INSERT (event_type, payload) ON dialpad.webhook_events TO dialpad_ingest;
GRANT SELECT (id, call_id, dedupe_key, duplicate_of, received_at) ON dialpad.webhook_events TO dialpad_ingest;
GRANT USAGE ON SEQUENCE dialpad.webhook_events_id_seq TO dialpad_ingest;

-- Webhook sources hold secrets: managed by the extension's owner (superusers) only.
REVOKE EXECUTE ON FUNCTION dialpad.add_source(text, text, jsonb), dialpad.rotate_secret(text, text, interval),
    dialpad.disable_source(text), dialpad.enable_source(text), dialpad.drop_source(text) FROM PUBLIC;

-- dialpad_reader: analysts and dashboards. Calls, rejected transitions, stats, dead letters.
GRANT SELECT ON dialpad.calls, dialpad.rejected_transitions, dialpad.queue_stats, dialpad.worker_stats,
    dialpad.payload_stats, dialpad.ingest_stats, dialpad.dead_events, dialpad.dead_event_reasons, dialpad.source_list
    TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.worker_stats(), dialpad.ingest_stats(), dialpad.processed_last_minute()
    TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.worker_node_stats(), dialpad.worker_node_status(),
    dialpad.worker_node_processed_last_minute() TO dialpad_reader;
-- Every view a reader may read runs with the reader's rights (security_invoker), so that the
-- row-level security policies of the tables under it apply (docs/security.md): a reader
-- reads the columns of the inbox that dead_events, queue_stats and payload_stats show, and
-- every column of the sources but the secrets (source_list).
GRANT SELECT (id, event_type, payload, received_at, processed_at, attempts, last_error, next_attempt_at, dead_at,
              source, discarded_at, discard_reason)
    ON dialpad.webhook_events TO dialpad_reader;
GRANT SELECT (name, enabled, labels, created_at, rotated_at, previous_valid_until) ON dialpad.sources TO dialpad_reader;

-- dialpad_admin: edits the rules and re-drives dead events; reads what a reader reads.
GRANT dialpad_reader TO dialpad_admin;
GRANT INSERT, UPDATE, DELETE ON dialpad.call_statuses, dialpad.status_transitions, dialpad.state_mapping
    TO dialpad_admin;
GRANT INSERT, DELETE ON dialpad.deleted_rules TO dialpad_admin;
GRANT EXECUTE ON FUNCTION dialpad.retry_event(bigint), dialpad.retry_dead_events(text, text, text, timestamptz, timestamptz),
    dialpad.discard_event(bigint, text), dialpad.discard_dead_events(text, text, text, text, timestamptz, timestamptz),
    dialpad.matching_dead_events(text, text, text, timestamptz, timestamptz), dialpad.wake_workers()
    TO dialpad_admin;
GRANT SELECT (id, processed_at, dead_at, next_attempt_at, attempts),
      UPDATE (dead_at, attempts, next_attempt_at, discarded_at, discard_reason) ON dialpad.webhook_events TO dialpad_admin;

-- dialpad_worker: what the background worker (or a pg_cron job calling process_events)
-- needs when it does not run as a superuser: grant it to the login role named in dialpad.role.
GRANT EXECUTE ON FUNCTION dialpad.process_events(integer), dialpad.processed_last_minute() TO dialpad_worker;
GRANT SELECT, UPDATE (processed_at, attempts, last_error, next_attempt_at, dead_at, duplicate_of)
    ON dialpad.webhook_events TO dialpad_worker;
GRANT SELECT, INSERT, UPDATE ON dialpad.calls TO dialpad_worker;
GRANT USAGE ON SEQUENCE dialpad.rejected_transitions_id_seq TO dialpad_worker;
GRANT INSERT ON dialpad.rejected_transitions TO dialpad_worker;

-- Maintenance (sql/maintenance.sql): run as the extension's owner, by the workers or an admin.
REVOKE EXECUTE ON FUNCTION dialpad.run_maintenance(), dialpad.add_partition(regclass, timestamptz, interval),
    dialpad.index_like_default(regclass, text), dialpad.hold_unfinished_events(regclass, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.run_maintenance() TO dialpad_admin, dialpad_worker;
GRANT SELECT ON dialpad.partitions TO dialpad_reader;

-- Analysts (sql/analytics.sql).
GRANT SELECT ON dialpad.logical_calls, dialpad.logical_calls_from_legs TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.rebuild_logical_calls() TO dialpad_admin;

-- Re-deriving calls (sql/rederive.sql): an admin lists calls; the processing role (the
-- workers, or a session as dialpad_worker calling rederive_step) re-derives them and
-- replaces the processor's rejections of their events; readers follow the progress.
REVOKE EXECUTE ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]),
    dialpad.rederive_step(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]) TO dialpad_admin;
GRANT EXECUTE ON FUNCTION dialpad.rederive_step(integer) TO dialpad_worker;
GRANT SELECT ON dialpad.rederive_jobs, dialpad.rederive_queue, dialpad.rederive_progress TO dialpad_reader;
GRANT INSERT, UPDATE ON dialpad.rederive_jobs TO dialpad_admin;
GRANT USAGE ON SEQUENCE dialpad.rederive_jobs_id_seq TO dialpad_admin;
GRANT INSERT ON dialpad.rederive_queue TO dialpad_admin;
GRANT SELECT (call_id, duplicate_of, source) ON dialpad.webhook_events TO dialpad_admin;
GRANT SELECT, UPDATE ON dialpad.rederive_jobs TO dialpad_worker;
GRANT SELECT, UPDATE, DELETE ON dialpad.rederive_queue TO dialpad_worker;
GRANT SELECT (dialpad_call_id, event_id, rejected_at), DELETE ON dialpad.rejected_transitions TO dialpad_worker;
-- Ingest counters: readers read them; the first worker (dialpad_worker) and admins flush them.
REVOKE EXECUTE ON FUNCTION dialpad.ingest_counters_unflushed(), dialpad.flush_ingest_counters() FROM PUBLIC;
GRANT SELECT ON dialpad.ingest_counters, dialpad.ingest_stats_by_source TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.ingest_counters_unflushed() TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.flush_ingest_counters() TO dialpad_admin, dialpad_worker;
GRANT INSERT, UPDATE ON dialpad.ingest_counters TO dialpad_admin, dialpad_worker;
