-- Processing: the wake-up trigger, dead letters, and the monitoring views.

CREATE TRIGGER webhook_events_wake AFTER INSERT ON dialpad.webhook_events
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.wake_workers_on_insert();

CREATE VIEW dialpad.dead_events WITH (security_invoker = true) AS
SELECT id, event_type,
       CASE WHEN pg_catalog.jsonb_typeof(payload) OPERATOR(pg_catalog.=) 'object'
            THEN payload OPERATOR(pg_catalog.->>) 'call_id' END AS call_id,
       attempts, last_error, received_at, dead_at, payload
  FROM dialpad.webhook_events
 WHERE dead_at IS NOT NULL;
COMMENT ON VIEW dialpad.dead_events IS
    'Dead-lettered events: they will not be tried again until dialpad.retry_event(id) or dialpad.retry_dead_events().';

CREATE FUNCTION dialpad.retry_event(event_id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE dialpad.webhook_events
       SET dead_at = NULL, attempts = 0, next_attempt_at = NULL
     WHERE id = event_id AND processed_at IS NULL
       AND (dead_at IS NOT NULL OR next_attempt_at IS NOT NULL);
    IF FOUND THEN
        PERFORM dialpad.wake_workers();
        RETURN true;
    END IF;
    RETURN false;
END
$$;
COMMENT ON FUNCTION dialpad.retry_event(bigint) IS
    'Makes a dead-lettered (or waiting-to-retry) event due now, with its attempt count reset. False if there is no such event.';

CREATE FUNCTION dialpad.retry_dead_events() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE n bigint;
BEGIN
    UPDATE dialpad.webhook_events
       SET dead_at = NULL, attempts = 0, next_attempt_at = NULL
     WHERE dead_at IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM dialpad.wake_workers();
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.retry_dead_events() IS
    'Re-drives every dead-lettered event; returns how many.';

CREATE VIEW dialpad.queue_stats WITH (security_invoker = true) AS
SELECT q.pending, q.due, q.retrying,
       (SELECT pg_catalog.count(*) FROM dialpad.webhook_events d WHERE d.dead_at IS NOT NULL) AS dead,
       pg_catalog.now() OPERATOR(pg_catalog.-) q.oldest_received_at AS oldest_pending_age,
       dialpad.processed_last_minute() AS processed_last_minute
  FROM (SELECT pg_catalog.count(*) AS pending,
               pg_catalog.count(*) FILTER (WHERE e.next_attempt_at IS NULL
                   OR e.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()) AS due,
               pg_catalog.count(*) FILTER (WHERE e.attempts OPERATOR(pg_catalog.>) 0) AS retrying,
               pg_catalog.min(e.received_at) AS oldest_received_at
          FROM dialpad.webhook_events e
         WHERE e.processed_at IS NULL AND e.dead_at IS NULL) q;
COMMENT ON VIEW dialpad.queue_stats IS
    'The inbox at a glance: pending events, how many are due now, retrying after a failure, dead-lettered, the age of the oldest pending one, and events processed in the last minute (NULL without shared_preload_libraries).';

-- dialpad.worker_stats is in sql/citus.sql (it adds the worker nodes of a Citus cluster).

CREATE VIEW dialpad.payload_stats WITH (security_invoker = true) AS
SELECT 'calls.raw_payload'::text AS source,
       pg_catalog.count(c.raw_payload) AS payloads,
       pg_catalog.avg(pg_catalog.pg_column_size(c.raw_payload))::bigint AS avg_bytes,
       pg_catalog.min(pg_catalog.pg_column_size(c.raw_payload)) AS min_bytes,
       pg_catalog.max(pg_catalog.pg_column_size(c.raw_payload)) AS max_bytes
  FROM dialpad.calls c
UNION ALL
SELECT 'webhook_events.payload',
       pg_catalog.count(e.payload),
       pg_catalog.avg(pg_catalog.pg_column_size(e.payload))::bigint,
       pg_catalog.min(pg_catalog.pg_column_size(e.payload)),
       pg_catalog.max(pg_catalog.pg_column_size(e.payload))
  FROM dialpad.webhook_events e;
COMMENT ON VIEW dialpad.payload_stats IS
    'Stored size of the sanitized payloads on calls and of the full payloads in the inbox (scans both tables).';

-- DROP EXTENSION while the workers run and sessions ingest: see src/api/drop_guard.rs.
CREATE FUNCTION dialpad.before_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'dialpad_before_drop';
COMMENT ON FUNCTION dialpad.before_drop() IS
    'Event trigger: before DROP EXTENSION pg_dialpad (or DROP SCHEMA dialpad), pauses the workers and locks the extension''s tables in the order every writer locks them, so the drop succeeds at once.';
CREATE EVENT TRIGGER dialpad_before_drop ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION dialpad.before_drop();
