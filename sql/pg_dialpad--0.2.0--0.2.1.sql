-- pg_dialpad 0.2.0 -> 0.2.1: a security release (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.2.1'" to load this file. \quit

-- Redelivery keys are bounded and name the source (src/domain/webhook.rs dedupe_key): keys
-- stored by 0.2.0 stay as they are; a redelivery of such an event is still caught by the
-- processor from the call's history.
COMMENT ON COLUMN dialpad.webhook_events.dedupe_key IS 'call_id/state/event_timestamp@source (numbers in one canonical spelling; @source for a delivery through a webhook source), set on insert when all three are in the payload: deliveries with the same key are one event (Dialpad redelivers). A key past 200 bytes is call_id/# and a SHA-256 of its parts.';
-- ---------------------------------------------------------------------------------------------
-- Row-level security reaches every view a reader may read (issue 22, item 4): the views run
-- with the caller's rights, and a reader gets the columns they read.
-- ---------------------------------------------------------------------------------------------
ALTER VIEW dialpad.source_list SET (security_invoker = true);
ALTER VIEW dialpad.dead_events SET (security_invoker = true);
ALTER VIEW dialpad.queue_stats SET (security_invoker = true);
ALTER VIEW dialpad.payload_stats SET (security_invoker = true);
ALTER VIEW dialpad.partitions SET (security_invoker = true);
ALTER VIEW dialpad.logical_calls_from_legs SET (security_invoker = true);
ALTER VIEW dialpad.worker_stats SET (security_invoker = true);
ALTER VIEW dialpad.ingest_stats SET (security_invoker = true);
GRANT SELECT (id, event_type, payload, received_at, processed_at, attempts, last_error, next_attempt_at, dead_at)
    ON dialpad.webhook_events TO dialpad_reader;
GRANT SELECT (name, enabled, labels, created_at, rotated_at, previous_valid_until) ON dialpad.sources TO dialpad_reader;

-- ---------------------------------------------------------------------------------------------
-- SECURITY DEFINER audit (issue 22): the trigger function that runs as the owner is not
-- executable by PUBLIC, and the Citus catalogs and functions that the owner's functions name
-- are schema-qualified (here and in the command text sent to the worker nodes).
-- ---------------------------------------------------------------------------------------------
REVOKE EXECUTE ON FUNCTION dialpad.calls_truncated() FROM PUBLIC;
CREATE OR REPLACE FUNCTION dialpad.calls_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    logical text;
    stale text;
BEGIN
    IF TG_RELID OPERATOR(pg_catalog.=) 'dialpad.calls'::regclass THEN
        TRUNCATE dialpad.logical_calls;
        RETURN NULL;
    END IF;
    -- A Citus shard of the legs (README, "Scaling out with Citus"): a TRUNCATE reaches every
    -- shard, and each empties its colocated shards of logical_calls and logical_calls_stale
    -- (the distributed table itself cannot be truncated from inside the TRUNCATE).
    SELECT pg_catalog.format('dialpad.%I', 'logical_calls_' || l.shardid),
           pg_catalog.format('dialpad.%I', 'logical_calls_stale_' || st.shardid)
      INTO logical, stale
      FROM pg_catalog.pg_dist_shard c
      JOIN pg_catalog.pg_dist_shard l ON l.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
                          AND l.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.logical_calls'::regclass
      JOIN pg_catalog.pg_dist_shard st ON st.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
                           AND st.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.logical_calls_stale'::regclass
     WHERE c.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.calls'::regclass
       AND c.shardid OPERATOR(pg_catalog.=) pg_catalog.substring(TG_TABLE_NAME, '_(\d+)$')::bigint;
    IF logical IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_manual_changes_to_shards', 'on', true);
        EXECUTE pg_catalog.format('TRUNCATE %s, %s', logical, stale);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dialpad.on_worker_nodes(command text)
RETURNS TABLE (node text, success boolean, result text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RETURN;
    END IF;
    IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) OPERATOR(pg_catalog.<>) 0
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                       WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.calls'::pg_catalog.regclass) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT w.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) w.nodeport, w.success, w.result
                   FROM pg_catalog.run_command_on_workers(command) w ORDER BY 1;
END
$$;

CREATE OR REPLACE FUNCTION dialpad.worker_node_stats()
RETURNS TABLE (node text, worker integer, pid integer, events_handled bigint, batches bigint, errors bigint,
               dead_lettered bigint, rejected_transitions bigint, last_batch_at timestamptz, started_at timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.node, s.*
      FROM dialpad.on_worker_nodes('SELECT COALESCE(pg_catalog.json_agg(s), ''[]'') FROM dialpad.worker_stats() s') n,
           json_to_recordset(CASE WHEN n.success THEN n.result::json ELSE '[]' END)
               AS s(worker integer, pid integer, events_handled bigint, batches bigint, errors bigint,
                    dead_lettered bigint, rejected_transitions bigint, last_batch_at timestamptz, started_at timestamptz)
$$;

CREATE OR REPLACE FUNCTION dialpad.worker_node_status()
RETURNS TABLE (node text, component text, pid integer, running boolean, detail text, hint text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.node, s.component, s.pid, s.running, s.detail, s.hint
      FROM dialpad.on_worker_nodes('SELECT COALESCE(pg_catalog.json_agg(s), ''[]'') FROM dialpad.worker_status() s') n,
           json_to_recordset(CASE WHEN n.success THEN n.result::json ELSE '[]' END)
               AS s(component text, pid integer, running boolean, detail text, hint text)
    UNION ALL
    SELECT n.node, 'node', NULL, false, 'could not ask the node: ' || n.result,
           'Is it up, and does the coordinator reach it (SELECT * FROM citus_check_cluster_node_health())?'
      FROM dialpad.on_worker_nodes('SELECT 1') n
     WHERE NOT n.success
$$;

-- Documentation (issue 25): the comment of ingest_webhook names the source in the
-- redelivery key, as 0.2.1 matches redeliveries within one source only.
COMMENT ON FUNCTION dialpad.ingest_webhook(text, text) IS
    'Stores one webhook delivery and returns the id of its first delivery; a redelivery (the same call_id/state/event_timestamp through the same source) is kept marked duplicate_of that id and never applied again. source names the webhook source (dialpad.sources) whose secrets verify the HS256 JWT body; NULL means the only source, or plain JSON when there is none. Errors: 22P02 malformed JSON or token, 28000 refused (DETAIL: bad signature, expired, not yet valid, unsupported crit, unsupported algorithm, unknown source, disabled source, unsigned body), 22023 stale event or several sources and none named, 54000 body over dialpad.max_body_size.';
