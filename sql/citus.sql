-- pg_dialpad on Citus (docs/citus.md). This file is part of both a fresh
-- install and the 0.1.0 -> 0.2.0 upgrade script (copied there verbatim). Nothing here runs
-- unless a DBA calls dialpad.distribute() on a Citus coordinator: one node is unchanged.

-- dialpad.logical_calls on Citus (src/citus/logical.rs): the logical calls whose legs a
-- node's shards wrote, noted on that node, then handed to the node keeping their row. Both
-- stay empty on one node.
CREATE TABLE dialpad.logical_calls_touched (
    logical_call_id bigint PRIMARY KEY
);
COMMENT ON TABLE dialpad.logical_calls_touched IS
    'On a Citus node: logical calls whose legs this node''s shards of dialpad.calls wrote, waiting to be handed to the keeper of their dialpad.logical_calls row (empty on one node).';
CREATE TABLE dialpad.logical_calls_stale (
    logical_call_id bigint PRIMARY KEY
);
COMMENT ON TABLE dialpad.logical_calls_stale IS
    'On Citus: logical calls whose dialpad.logical_calls row is to be recomputed from their legs, distributed like that table so that each waits on the node keeping its row (empty on one node).';

COMMENT ON FUNCTION dialpad.routing_call_id(jsonb) IS
    'The call id Citus routes an event by: the payload''s call_id, or 0 when it has none (added to INSERTs into the distributed inbox by pg_dialpad''s planner hook).';

CREATE FUNCTION dialpad.distribute(shard_count integer DEFAULT NULL)
RETURNS TABLE (relation regclass, distribution text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel regclass;
    part regclass;
    pk name;
    key text;
    node record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'pg_dialpad scales out on Citus: preload it before pg_dialpad (shared_preload_libraries = ''citus,pg_dialpad''), CREATE EXTENSION citus, add the worker nodes with citus_add_node(), then run SELECT dialpad.distribute() on the coordinator.';
    END IF;
    IF (SELECT groupid FROM pg_dist_local_group) OPERATOR(pg_catalog.<>) 0 THEN
        RAISE EXCEPTION 'dialpad.distribute() runs on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (SELECT FROM dialpad.leg_backfill) THEN
        RAISE EXCEPTION 'the leg columns of the calls of 0.1.0 are still being filled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Wait until dialpad.leg_backfill is empty (dialpad.run_maintenance() fills it), then run dialpad.distribute() again.';
    END IF;
    -- The triggers of the rule tables and of dialpad.calls fire on the shards, on the node
    -- that holds them (src/citus.rs); the rule tables reference each other.
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    IF shard_count IS NOT NULL THEN
        PERFORM set_config('citus.shard_count', shard_count::text, true);
    END IF;

    -- The rules, on every node.
    FOREACH rel IN ARRAY ARRAY['dialpad.call_statuses', 'dialpad.status_transitions',
                               'dialpad.state_mapping']::regclass[] LOOP
        IF NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) rel) THEN
            PERFORM create_reference_table(rel);
        END IF;
        relation := rel;
        distribution := 'reference table';
        RETURN NEXT;
    END LOOP;

    -- Partitions a worker node made for itself before it joined the cluster would collide
    -- with those of the distributed tables: they go (they hold nothing; see
    -- dialpad.drop_node_partitions()).
    IF NOT EXISTS (SELECT FROM pg_dist_partition p
                    WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.webhook_events'::regclass) THEN
        FOR node IN SELECT * FROM run_command_on_workers('SELECT dialpad.drop_node_partitions()') LOOP
            IF NOT node.success THEN
                RAISE EXCEPTION 'could not prepare node %:% for distribution: %', node.nodename, node.nodeport, node.result
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END LOOP;
    END IF;

    -- A call's events, row and rejections: distributed by call id, colocated, so that they
    -- are on one node. Every unique key must hold the distribution column: each partition's
    -- primary key becomes (call id, id), the partitions dialpad.run_maintenance() makes
    -- after the DEFAULT partition's model alike. An event without a call id is routed (and
    -- kept) with call id 0, and dead-lettered there by the processor as on one node.
    FOREACH rel IN ARRAY ARRAY['dialpad.calls', 'dialpad.webhook_events',
                               'dialpad.rejected_transitions']::regclass[] LOOP
        key := CASE rel WHEN 'dialpad.webhook_events'::regclass THEN 'call_id' ELSE 'dialpad_call_id' END;
        IF NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) rel) THEN
            IF rel OPERATOR(pg_catalog.<>) 'dialpad.calls'::regclass THEN
                IF rel OPERATOR(pg_catalog.=) 'dialpad.webhook_events'::regclass THEN
                    ALTER TABLE dialpad.webhook_events DISABLE TRIGGER webhook_events_immutable;
                    UPDATE dialpad.webhook_events SET call_id = 0 WHERE call_id IS NULL;
                    ALTER TABLE dialpad.webhook_events ENABLE ALWAYS TRIGGER webhook_events_immutable;
                ELSE
                    UPDATE dialpad.rejected_transitions SET dialpad_call_id = 0 WHERE dialpad_call_id IS NULL;
                END IF;
                FOR part, pk IN
                    SELECT c.conrelid::regclass, c.conname FROM pg_constraint c
                      JOIN pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) c.conrelid
                     WHERE i.inhparent OPERATOR(pg_catalog.=) rel AND c.contype OPERATOR(pg_catalog.=) 'p'
                LOOP
                    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I PRIMARY KEY (%I, id)',
                                   part, pk, pk, key);
                END LOOP;
            END IF;
            PERFORM create_distributed_table(rel, key,
                colocate_with => CASE WHEN rel OPERATOR(pg_catalog.=) 'dialpad.calls'::regclass THEN 'none'
                                      ELSE 'dialpad.calls' END);
        END IF;
        relation := rel;
        distribution := format('distributed by %s', key);
        RETURN NEXT;
    END LOOP;
    -- The real calls: each row in the shard group of its logical call id, kept up to date
    -- there by that group's worker from the legs on every node (src/citus/logical.rs).
    FOREACH rel IN ARRAY ARRAY['dialpad.logical_calls', 'dialpad.logical_calls_stale']::regclass[] LOOP
        IF NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) rel) THEN
            PERFORM create_distributed_table(rel, 'logical_call_id', colocate_with => 'dialpad.calls');
        END IF;
        relation := rel;
        distribution := 'distributed by logical_call_id';
        RETURN NEXT;
    END LOOP;
    -- The rows copied into the shards stay on the coordinator's disk, invisible, until this.
    FOREACH rel IN ARRAY ARRAY['dialpad.logical_calls', 'dialpad.logical_calls_stale',
                               'dialpad.webhook_events', 'dialpad.rejected_transitions', 'dialpad.calls',
                               'dialpad.state_mapping', 'dialpad.status_transitions', 'dialpad.call_statuses']::regclass[] LOOP
        PERFORM truncate_local_data_after_distributing_table(rel);
    END LOOP;
    PERFORM dialpad.wake_workers();
END
$$;
COMMENT ON FUNCTION dialpad.distribute(integer) IS
    'On a Citus coordinator: makes the rule tables reference tables and distributes dialpad.calls, webhook_events and rejected_transitions by call id, colocated (shard_count: citus.shard_count unless given). Idempotent; returns each table and how it is distributed.';
REVOKE EXECUTE ON FUNCTION dialpad.distribute(integer) FROM PUBLIC;

-- Run on each worker node by dialpad.distribute(), before the tables are distributed.
CREATE FUNCTION dialpad.drop_node_partitions() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p regclass;
    has_rows boolean;
    n integer := 0;
BEGIN
    FOR p IN SELECT q.partition FROM dialpad.partitions q WHERE NOT q.is_default LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s)', p) INTO has_rows;
        IF has_rows THEN
            RAISE EXCEPTION 'partition % of this node holds rows', p
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Events were stored on a worker node before it joined the cluster: deliver them through the coordinator, then drop the table.';
        END IF;
        EXECUTE format('DROP TABLE %s', p);
        n := n OPERATOR(pg_catalog.+) 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.drop_node_partitions() IS
    'On a Citus worker node, before dialpad.distribute(): drops the (empty) time partitions this node made for itself before it joined the cluster; returns how many.';
REVOKE EXECUTE ON FUNCTION dialpad.drop_node_partitions() FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Monitoring across the cluster: on a Citus coordinator whose tables are distributed, the
-- monitoring views and functions add the rows of every worker node (node 'host:port') to
-- this server's own (node 'local'). Anywhere else they show this server alone.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION dialpad.on_worker_nodes(command text)
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
COMMENT ON FUNCTION dialpad.on_worker_nodes(text) IS
    'On a Citus coordinator after dialpad.distribute(): runs command on every worker node (run_command_on_workers); no rows anywhere else.';
REVOKE EXECUTE ON FUNCTION dialpad.on_worker_nodes(text) FROM PUBLIC;

CREATE FUNCTION dialpad.worker_node_stats()
RETURNS TABLE (node text, worker integer, pid integer, events_handled bigint, batches bigint, errors bigint,
               dead_lettered bigint, rejected_transitions bigint, last_batch_at timestamptz, started_at timestamptz,
               settings_read_at timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.node, s.*
      FROM dialpad.on_worker_nodes('SELECT COALESCE(pg_catalog.json_agg(s), ''[]'') FROM dialpad.worker_stats() s') n,
           json_to_recordset(CASE WHEN n.success THEN n.result::json ELSE '[]' END)
               AS s(worker integer, pid integer, events_handled bigint, batches bigint, errors bigint,
                    dead_lettered bigint, rejected_transitions bigint, last_batch_at timestamptz, started_at timestamptz,
                    settings_read_at timestamptz)
$$;
COMMENT ON FUNCTION dialpad.worker_node_stats() IS
    'dialpad.worker_stats() of every worker node of a Citus cluster (from its coordinator), with the node.';
REVOKE EXECUTE ON FUNCTION dialpad.worker_node_stats() FROM PUBLIC;

CREATE FUNCTION dialpad.worker_node_status()
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
COMMENT ON FUNCTION dialpad.worker_node_status() IS
    'dialpad.worker_status() of every worker node of a Citus cluster (from its coordinator), with the node; a row for each node that cannot be reached.';
REVOKE EXECUTE ON FUNCTION dialpad.worker_node_status() FROM PUBLIC;

CREATE FUNCTION dialpad.worker_node_processed_last_minute() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT sum(n.result::bigint)::bigint
      FROM dialpad.on_worker_nodes('SELECT dialpad.processed_last_minute()') n
     WHERE n.success AND n.result IS NOT NULL AND n.result OPERATOR(pg_catalog.<>) ''
$$;
COMMENT ON FUNCTION dialpad.worker_node_processed_last_minute() IS
    'Events the worker nodes of a Citus cluster handled in the last 60 seconds (from its coordinator; NULL elsewhere).';
REVOKE EXECUTE ON FUNCTION dialpad.worker_node_processed_last_minute() FROM PUBLIC;

CREATE VIEW dialpad.worker_stats WITH (security_invoker = true) AS
SELECT 'local'::text AS node, s.* FROM dialpad.worker_stats() s
UNION ALL
SELECT * FROM dialpad.worker_node_stats();
COMMENT ON VIEW dialpad.worker_stats IS
    'Per worker (from shared memory, since server start): node (local: this server; on a Citus coordinator, also each worker node as host:port), pid, events handled, batches, failed events, dead-lettered events, rejected transitions, last batch time, start time, and when the worker last read its settings (a reload is taken once it is later than the reload).';
