-- Processing: the wake-up trigger, dead letters, and the monitoring views.

CREATE TRIGGER webhook_events_wake AFTER INSERT ON dialpad.webhook_events
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.wake_workers_on_insert();

-- Dead letters and their triage (docs/troubleshooting.md, "Dead events"). A dead event is
-- dead_at set, processed_at and discarded_at NULL. A DBA re-drives it (retry) or
-- acknowledges it (discard, with a reason): a discarded event is no longer dead, and stays
-- in the audit log until retention drops its partition.

-- The kind of failure a dead event's last_error names, without the values it quotes: what
-- dialpad.dead_event_reasons groups by and the triage functions' reason argument matches.
CREATE FUNCTION dialpad.dead_event_reason(last_error text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN last_error IS NULL THEN NULL
        WHEN last_error ~ '^field [A-Za-z_.]+: ' THEN substring(last_error FROM '^field [A-Za-z_.]+') || ' is unreadable'
        WHEN last_error ~ '^call -?[0-9]+ belongs to webhook source ' THEN 'the call belongs to another webhook source'
        ELSE left(regexp_replace(regexp_replace(last_error, '"[^"]*"|''[^'']*''', '"…"', 'g'), '-?[0-9]+', 'N', 'g'), 120)
    END
$$;
COMMENT ON FUNCTION dialpad.dead_event_reason(text) IS
    'The kind of failure a dead event''s last_error names, without the values it quotes (field X is unreadable, payload has no call_id, ...): what dialpad.dead_event_reasons groups by.';

CREATE VIEW dialpad.dead_events WITH (security_invoker = true) AS
SELECT id, event_type,
       CASE WHEN pg_catalog.jsonb_typeof(payload) OPERATOR(pg_catalog.=) 'object'
            THEN payload OPERATOR(pg_catalog.->>) 'call_id' END AS call_id,
       attempts, last_error, received_at, dead_at, payload,
       source, dialpad.dead_event_reason(last_error) AS reason
  FROM dialpad.webhook_events
 WHERE dead_at IS NOT NULL AND processed_at IS NULL AND discarded_at IS NULL;
COMMENT ON VIEW dialpad.dead_events IS
    'Dead-lettered events: they will not be tried again until re-driven (dialpad.retry_event, dialpad.retry_dead_events) or discarded (dialpad.discard_event, dialpad.discard_dead_events).';

CREATE VIEW dialpad.dead_event_reasons WITH (security_invoker = true) AS
SELECT dialpad.dead_event_reason(last_error) AS reason, source,
       pg_catalog.count(*) AS events,
       pg_catalog.min(received_at) AS first_received_at, pg_catalog.max(received_at) AS last_received_at,
       pg_catalog.max(dead_at) AS last_dead_at,
       pg_catalog.min(id) AS example_id,
       (pg_catalog.array_agg(last_error ORDER BY id))[1] AS example_error
  FROM dialpad.webhook_events
 WHERE dead_at IS NOT NULL AND processed_at IS NULL AND discarded_at IS NULL
 GROUP BY 1, 2;
COMMENT ON VIEW dialpad.dead_event_reasons IS
    'Dead events grouped by reason (dialpad.dead_event_reason of last_error) and webhook source: how many, received when, the newest dead-lettering, and one example. Retry or discard a group with dialpad.retry_dead_events(source => ..., dead_reason => ...) or dialpad.discard_dead_events(reason, source => ..., dead_reason => ...).';

-- The dead events a triage call names: every argument that is not NULL must match.
CREATE FUNCTION dialpad.matching_dead_events(source text, dead_reason text, error_like text,
                                             received_after timestamptz, received_before timestamptz)
RETURNS TABLE (id bigint, received_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.id, e.received_at FROM dialpad.webhook_events e
     WHERE e.dead_at IS NOT NULL AND e.processed_at IS NULL AND e.discarded_at IS NULL
       AND (matching_dead_events.source IS NULL OR e.source = matching_dead_events.source)
       AND (dead_reason IS NULL OR dialpad.dead_event_reason(e.last_error) = dead_reason)
       AND (error_like IS NULL OR e.last_error LIKE error_like)
       AND (received_after IS NULL OR e.received_at >= received_after)
       AND (received_before IS NULL OR e.received_at < received_before)
$$;
COMMENT ON FUNCTION dialpad.matching_dead_events(text, text, text, timestamptz, timestamptz) IS
    'The dead events (id, received_at) that match every argument given (NULL: any): webhook source, dead_reason (the reason dialpad.dead_event_reasons shows), last_error LIKE pattern, received_at range [after, before). What dialpad.retry_dead_events and dialpad.discard_dead_events act on.';

CREATE FUNCTION dialpad.retry_event(event_id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE dialpad.webhook_events
       SET dead_at = NULL, attempts = 0, next_attempt_at = NULL, discarded_at = NULL, discard_reason = NULL
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
    'Makes a dead-lettered, discarded or waiting-to-retry event due now, with its attempt count reset. False if there is no such event.';

CREATE FUNCTION dialpad.retry_dead_events(source text DEFAULT NULL, dead_reason text DEFAULT NULL,
                                          error_like text DEFAULT NULL,
                                          received_after timestamptz DEFAULT NULL,
                                          received_before timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE n bigint;
BEGIN
    UPDATE dialpad.webhook_events e
       SET dead_at = NULL, attempts = 0, next_attempt_at = NULL
      FROM dialpad.matching_dead_events(retry_dead_events.source, dead_reason, error_like, received_after, received_before) m
     WHERE e.id = m.id AND e.received_at = m.received_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM dialpad.wake_workers();
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.retry_dead_events(text, text, text, timestamptz, timestamptz) IS
    'Re-drives the dead events that match every argument given (none: all of them): webhook source, dead_reason (the reason dialpad.dead_event_reasons shows), last_error LIKE pattern, received_at in [received_after, received_before). Returns how many.';

CREATE FUNCTION dialpad.discard_event(event_id bigint, reason text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(btrim(reason), '') = '' THEN
        RAISE EXCEPTION 'a discarded event needs a reason' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why the event will never be applied, e.g. ''test request from the Dialpad console''.';
    END IF;
    UPDATE dialpad.webhook_events
       SET dead_at = coalesce(dead_at, now()), next_attempt_at = NULL, discarded_at = now(),
           discard_reason = left(discard_event.reason, 1000)
     WHERE id = event_id AND processed_at IS NULL AND discarded_at IS NULL;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION dialpad.discard_event(bigint, text) IS
    'Acknowledges an unprocessed (usually dead-lettered) event that will never be applied: it is no longer dead or pending, keeps its row for audit until retention drops its partition, and records reason (at most 1,000 characters). False if there is no such event. dialpad.retry_event() takes it back. Errors: 22023 no reason.';

CREATE FUNCTION dialpad.discard_dead_events(reason text, source text DEFAULT NULL, dead_reason text DEFAULT NULL,
                                            error_like text DEFAULT NULL,
                                            received_after timestamptz DEFAULT NULL,
                                            received_before timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE n bigint;
BEGIN
    IF coalesce(btrim(discard_dead_events.reason), '') = '' THEN
        RAISE EXCEPTION 'discarded events need a reason' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why the events will never be applied, e.g. ''not a call event''.';
    END IF;
    UPDATE dialpad.webhook_events e
       SET discarded_at = now(), discard_reason = left(discard_dead_events.reason, 1000)
      FROM dialpad.matching_dead_events(discard_dead_events.source, dead_reason, error_like, received_after, received_before) m
     WHERE e.id = m.id AND e.received_at = m.received_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.discard_dead_events(text, text, text, text, timestamptz, timestamptz) IS
    'Discards (see dialpad.discard_event) the dead events that match every filter given (none: all of them): webhook source, dead_reason (the reason dialpad.dead_event_reasons shows), last_error LIKE pattern, received_at in [received_after, received_before). reason says why they are discarded; returns how many. Errors: 22023 no reason.';

CREATE VIEW dialpad.queue_stats WITH (security_invoker = true) AS
SELECT q.pending, q.due, q.retrying,
       (SELECT pg_catalog.count(*) FROM dialpad.webhook_events d
         WHERE d.dead_at IS NOT NULL AND d.processed_at IS NULL AND d.discarded_at IS NULL) AS dead,
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
