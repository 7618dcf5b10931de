-- pg_dialpad 0.2.1 -> 0.3.0 (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------------
-- Retention that a dead event cannot pin (issue 26, part 1): expired partitions go whole;
-- their unfinished events move to the holding partition dialpad.webhook_events_held.
-- Dead-event triage (part 2): discarded events, triage by filter, dead events by reason.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE dialpad.webhook_events ADD COLUMN discarded_at timestamptz, ADD COLUMN discard_reason text;
-- @copy schema.sql: COMMENT ON COLUMN dialpad.webhook_events.discarded_at IS 'Set when a DBA discarded the event (dialpad.discard_event): acknowledged, no longer counted as dead, kept for audit until retention drops its partition.';
-- @copy schema.sql: COMMENT ON COLUMN dialpad.webhook_events.discard_reason IS 'Why the event was discarded (the reason given to dialpad.discard_event or dialpad.discard_dead_events).';

-- @copy maintenance.sql: CREATE FUNCTION dialpad.index_like_default(def regclass, partition text) RETURNS void
-- @copy maintenance.sql: COMMENT ON FUNCTION dialpad.index_like_default(regclass, text) IS

-- @copy maintenance.sql: CREATE FUNCTION dialpad.hold_unfinished_events(expired regclass, range_to timestamptz) RETURNS bigint
-- @copy maintenance.sql: COMMENT ON FUNCTION dialpad.hold_unfinished_events(regclass, timestamptz) IS

-- @copy-or-replace maintenance.sql: CREATE FUNCTION dialpad.add_partition(parent regclass, t timestamptz, width interval,
-- @copy maintenance.sql: COMMENT ON FUNCTION dialpad.add_partition(regclass, timestamptz, interval) IS

-- @copy-or-replace maintenance.sql: CREATE FUNCTION dialpad.run_maintenance()
-- @copy maintenance.sql: COMMENT ON FUNCTION dialpad.run_maintenance() IS

-- @copy processing.sql: CREATE FUNCTION dialpad.dead_event_reason(last_error text) RETURNS text
-- @copy processing.sql: COMMENT ON FUNCTION dialpad.dead_event_reason(text) IS

-- @copy-or-replace processing.sql: CREATE VIEW dialpad.dead_events WITH (security_invoker = true) AS
-- @copy processing.sql: COMMENT ON VIEW dialpad.dead_events IS

-- @copy processing.sql: CREATE VIEW dialpad.dead_event_reasons WITH (security_invoker = true) AS
-- @copy processing.sql: COMMENT ON VIEW dialpad.dead_event_reasons IS

-- @copy processing.sql: CREATE FUNCTION dialpad.matching_dead_events(source text, dead_reason text, error_like text,
-- @copy processing.sql: COMMENT ON FUNCTION dialpad.matching_dead_events(text, text, text, timestamptz, timestamptz) IS

-- @copy-or-replace processing.sql: CREATE FUNCTION dialpad.retry_event(event_id bigint) RETURNS boolean
-- @copy processing.sql: COMMENT ON FUNCTION dialpad.retry_event(bigint) IS

DROP FUNCTION dialpad.retry_dead_events();

-- @copy processing.sql: CREATE FUNCTION dialpad.retry_dead_events(source text DEFAULT NULL, dead_reason text DEFAULT NULL,
-- @copy processing.sql: COMMENT ON FUNCTION dialpad.retry_dead_events(text, text, text, timestamptz, timestamptz) IS

-- @copy processing.sql: CREATE FUNCTION dialpad.discard_event(event_id bigint, reason text) RETURNS boolean
-- @copy processing.sql: COMMENT ON FUNCTION dialpad.discard_event(bigint, text) IS

-- @copy processing.sql: CREATE FUNCTION dialpad.discard_dead_events(reason text, source text DEFAULT NULL, dead_reason text DEFAULT NULL,
-- @copy processing.sql: COMMENT ON FUNCTION dialpad.discard_dead_events(text, text, text, text, timestamptz, timestamptz) IS

-- @copy-or-replace processing.sql: CREATE VIEW dialpad.queue_stats WITH (security_invoker = true) AS
-- @copy processing.sql: COMMENT ON VIEW dialpad.queue_stats IS

REVOKE EXECUTE ON FUNCTION dialpad.retry_dead_events(text, text, text, timestamptz, timestamptz),
    dialpad.discard_event(bigint, text), dialpad.discard_dead_events(text, text, text, text, timestamptz, timestamptz),
    dialpad.matching_dead_events(text, text, text, timestamptz, timestamptz),
    dialpad.index_like_default(regclass, text), dialpad.hold_unfinished_events(regclass, timestamptz) FROM PUBLIC;
GRANT SELECT ON dialpad.dead_event_reasons TO dialpad_reader;
GRANT SELECT (source, discarded_at, discard_reason) ON dialpad.webhook_events TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.retry_dead_events(text, text, text, timestamptz, timestamptz),
    dialpad.discard_event(bigint, text), dialpad.discard_dead_events(text, text, text, text, timestamptz, timestamptz),
    dialpad.matching_dead_events(text, text, text, timestamptz, timestamptz)
    TO dialpad_admin;
GRANT UPDATE (discarded_at, discard_reason) ON dialpad.webhook_events TO dialpad_admin;
-- Transfers counted once (issue 26, part 5): Dialpad marks is_transferred on both legs of a
-- transfer; the leg a transfer created is the one whose payload has transferred_from.
-- ---------------------------------------------------------------------------------------------
-- @copy analytics.sql: ALTER TABLE dialpad.calls ADD COLUMN transferred_from_id text;
-- @copy analytics.sql: COMMENT ON COLUMN dialpad.calls.transferred_from_id IS 'transferred_from.id: set only on the leg a transfer created (Dialpad marks is_transferred on the leg transferred away too). dialpad.logical_calls.transfers counts these legs.';
-- @copy analytics.sql: COMMENT ON COLUMN dialpad.logical_calls.transfers IS 'How many transfers the call went through: its legs that a transfer created (transferred_from_id set). Dialpad marks is_transferred on both legs of a transfer; counting that would count each transfer twice.';
-- @copy-or-replace analytics.sql: CREATE VIEW dialpad.logical_calls_from_legs WITH (security_invoker = true) AS
-- @copy-or-replace analytics.sql: CREATE FUNCTION dialpad.backfill_legs(max_calls integer DEFAULT 5000) RETURNS bigint
-- Legs written before 0.3.0: those marked is_transferred (the only ones 0.2 counted; few)
-- take transferred_from.id from the stored payload (the newest event's) when it has one.
-- Every such leg is written, so that the triggers on dialpad.calls recompute the
-- dialpad.logical_calls row of each call that had a transfer counted.
UPDATE dialpad.calls
   SET transferred_from_id = CASE
           WHEN pg_catalog.jsonb_typeof(raw_payload -> 'transferred_from' -> 'id') IN ('string', 'number')
                AND pg_catalog.length(raw_payload -> 'transferred_from' ->> 'id') <= 2000
           THEN raw_payload -> 'transferred_from' ->> 'id' END
 WHERE is_transferred;

-- ---------------------------------------------------------------------------------------------
-- Ingest counters by source and reason, kept across restarts (issue 26, part 4).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION dialpad."ingest_counters_unflushed"() RETURNS TABLE (
	"source" TEXT,
	"outcome" TEXT,
	"reason" TEXT,
	"count" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_counters_unflushed_wrapper';
CREATE FUNCTION dialpad."flush_ingest_counters"() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'flush_ingest_counters_wrapper';
ALTER FUNCTION dialpad.ingest_counters_unflushed() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialpad.flush_ingest_counters() SET search_path = pg_catalog, pg_temp;
-- @copy finalize.sql: COMMENT ON FUNCTION dialpad.ingest_stats() IS
-- @copy finalize.sql: COMMENT ON FUNCTION dialpad.ingest_counters_unflushed() IS
-- @copy finalize.sql: COMMENT ON FUNCTION dialpad.flush_ingest_counters() IS
-- @copy finalize.sql: COMMENT ON VIEW dialpad.ingest_stats IS

-- ---------------------------------------------------------------------------------------------
-- Ingest counters (docs/operations.md, "Monitoring and alerts"): dialpad.ingest_webhook counts
-- every delivery in shared memory by source, outcome and reason (src/pg/counters.rs); the
-- first worker adds those counts to this table every few seconds and when it stops, so they
-- survive restarts. The views add what is not flushed yet.
-- ---------------------------------------------------------------------------------------------
-- @copy finalize.sql: CREATE TABLE dialpad.ingest_counters (
-- @copy finalize.sql: COMMENT ON TABLE dialpad.ingest_counters IS
-- @copy finalize.sql: COMMENT ON COLUMN dialpad.ingest_counters.source IS
-- @copy finalize.sql: COMMENT ON COLUMN dialpad.ingest_counters.outcome IS 'accepted (a new event), duplicate (a redelivery, stored marked duplicate_of) or rejected.';
-- @copy finalize.sql: COMMENT ON COLUMN dialpad.ingest_counters.reason IS
-- @copy finalize.sql: COMMENT ON COLUMN dialpad.ingest_counters.count IS 'Deliveries counted.';
-- @copy finalize.sql: COMMENT ON COLUMN dialpad.ingest_counters.since IS 'When this row was first written.';
-- @copy finalize.sql: COMMENT ON COLUMN dialpad.ingest_counters.updated_at IS 'When counts were last added.';
-- @copy finalize.sql: SELECT pg_catalog.pg_extension_config_dump('dialpad.ingest_counters', '');

-- @copy finalize.sql: CREATE VIEW dialpad.ingest_stats_by_source WITH (security_invoker = true) AS
-- @copy finalize.sql: COMMENT ON VIEW dialpad.ingest_stats_by_source IS

-- Ingest counters: readers read them; the first worker (dialpad_worker) and admins flush them.
-- @copy finalize.sql: REVOKE EXECUTE ON FUNCTION dialpad.ingest_counters_unflushed(), dialpad.flush_ingest_counters() FROM PUBLIC;
-- @copy finalize.sql: GRANT SELECT ON dialpad.ingest_counters, dialpad.ingest_stats_by_source TO dialpad_reader;
-- @copy finalize.sql: GRANT EXECUTE ON FUNCTION dialpad.ingest_counters_unflushed() TO dialpad_reader;
-- @copy finalize.sql: GRANT EXECUTE ON FUNCTION dialpad.flush_ingest_counters() TO dialpad_admin, dialpad_worker;
-- @copy finalize.sql: GRANT INSERT, UPDATE ON dialpad.ingest_counters TO dialpad_admin, dialpad_worker;

-- ---------------------------------------------------------------------------------------------
-- Re-deriving calls after a rule change (issue 26, part 3; sql/rederive.sql).
-- ---------------------------------------------------------------------------------------------
-- @copy rederive.sql: CREATE TABLE dialpad.rederive_jobs (
-- @copy rederive.sql: COMMENT ON TABLE dialpad.rederive_jobs IS

-- @copy rederive.sql: CREATE TABLE dialpad.rederive_queue (
-- @copy rederive.sql: COMMENT ON TABLE dialpad.rederive_queue IS

-- @copy rederive.sql: CREATE FUNCTION dialpad.rederive_calls(since timestamptz, until timestamptz DEFAULT now(),
-- @copy rederive.sql: COMMENT ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]) IS

-- @copy rederive.sql: CREATE VIEW dialpad.rederive_progress WITH (security_invoker = true) AS
-- @copy rederive.sql: COMMENT ON VIEW dialpad.rederive_progress IS

-- @copy rederive.sql: SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_jobs', '');
-- @copy rederive.sql: SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_jobs_id_seq', '');
-- @copy rederive.sql: SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_queue', '');

CREATE FUNCTION dialpad.rederive_step(max_calls integer DEFAULT 200) RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'rederive_step_wrapper';
ALTER FUNCTION dialpad.rederive_step(integer) SET search_path = pg_catalog, pg_temp;
-- @copy finalize.sql: COMMENT ON FUNCTION dialpad.rederive_step(integer) IS

-- Re-deriving calls (sql/rederive.sql): an admin lists calls; the processing role (the
-- workers, or a session as dialpad_worker calling rederive_step) re-derives them and
-- replaces the processor's rejections of their events; readers follow the progress.
-- @copy finalize.sql: REVOKE EXECUTE ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]),
-- @copy finalize.sql: GRANT EXECUTE ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]) TO dialpad_admin;
-- @copy finalize.sql: GRANT EXECUTE ON FUNCTION dialpad.rederive_step(integer) TO dialpad_worker;
-- @copy finalize.sql: GRANT SELECT ON dialpad.rederive_jobs, dialpad.rederive_queue, dialpad.rederive_progress TO dialpad_reader;
-- @copy finalize.sql: GRANT INSERT, UPDATE ON dialpad.rederive_jobs TO dialpad_admin;
-- @copy finalize.sql: GRANT USAGE ON SEQUENCE dialpad.rederive_jobs_id_seq TO dialpad_admin;
-- @copy finalize.sql: GRANT INSERT ON dialpad.rederive_queue TO dialpad_admin;
-- @copy finalize.sql: GRANT SELECT (call_id, duplicate_of, source) ON dialpad.webhook_events TO dialpad_admin;
-- @copy finalize.sql: GRANT SELECT, UPDATE ON dialpad.rederive_jobs TO dialpad_worker;
-- @copy finalize.sql: GRANT SELECT, UPDATE, DELETE ON dialpad.rederive_queue TO dialpad_worker;
-- @copy finalize.sql: GRANT SELECT (dialpad_call_id, event_id, rejected_at), DELETE ON dialpad.rejected_transitions TO dialpad_worker;

-- ---------------------------------------------------------------------------------------------
-- The workers publish when they last read their settings (worker_stats.settings_read_at): a
-- reload is taken once every worker's time is later than the reload (issue 24).
-- ---------------------------------------------------------------------------------------------
DROP VIEW dialpad.worker_stats;
DROP FUNCTION dialpad.worker_node_stats();
DROP FUNCTION dialpad.worker_stats();
CREATE FUNCTION dialpad."worker_stats"() RETURNS TABLE (
	"worker" INT,
	"pid" INT,
	"events_handled" bigint,
	"batches" bigint,
	"errors" bigint,
	"dead_lettered" bigint,
	"rejected_transitions" bigint,
	"last_batch_at" timestamp with time zone,
	"started_at" timestamp with time zone,
	"settings_read_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_stats_wrapper';
ALTER FUNCTION dialpad.worker_stats() SET search_path = pg_catalog, pg_temp;
-- @copy finalize.sql: COMMENT ON FUNCTION dialpad.worker_stats() IS
REVOKE EXECUTE ON FUNCTION dialpad.worker_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.worker_stats() TO dialpad_reader;

-- @copy citus.sql: CREATE FUNCTION dialpad.worker_node_stats()
-- @copy citus.sql: COMMENT ON FUNCTION dialpad.worker_node_stats() IS
-- @copy citus.sql: REVOKE EXECUTE ON FUNCTION dialpad.worker_node_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.worker_node_stats() TO dialpad_reader;

-- @copy citus.sql: CREATE VIEW dialpad.worker_stats WITH (security_invoker = true) AS
-- @copy citus.sql: COMMENT ON VIEW dialpad.worker_stats IS
GRANT SELECT ON dialpad.worker_stats TO dialpad_reader;

-- ---------------------------------------------------------------------------------------------
-- dialpad.partitions reads each partition's bound from the catalog (dialpad.partition_bounds),
-- as the insert trigger's redelivery lookup does, instead of matching the text pg_get_expr
-- prints. Same columns, same rows.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION dialpad."partition_bounds"(
	"partition" oid
) RETURNS TABLE (
	"is_default" bool,
	"range_from" timestamp with time zone,
	"range_to" timestamp with time zone
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'partition_bounds_wrapper';
ALTER FUNCTION dialpad.partition_bounds(oid) SET search_path = pg_catalog, pg_temp;
-- @copy finalize.sql: COMMENT ON FUNCTION dialpad.partition_bounds(oid) IS

-- @copy-or-replace maintenance.sql: CREATE VIEW dialpad.partitions WITH (security_invoker = true) AS

-- ---------------------------------------------------------------------------------------------
-- No GIN index on dialpad.calls.raw_payload (issue 23): every event rewrote the call's
-- entries, its pending-list cleanup stalled the worker for tens of milliseconds (the p99
-- of delivery -> call row), and it kept call updates from being HOT. The full events stay
-- in webhook_events, found by call_id; a DBA who queries raw_payload with @> creates an
-- index of their own (CHANGELOG.md).
-- ---------------------------------------------------------------------------------------------
DROP INDEX IF EXISTS dialpad.calls_raw_payload;
