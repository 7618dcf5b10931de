-- pg_dialpad 0.2.1 -> 0.3.0 (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------------
-- Retention that a dead event cannot pin (issue 26, part 1): expired partitions go whole;
-- their unfinished events move to the holding partition dialpad.webhook_events_held.
-- Dead-event triage (part 2): discarded events, triage by filter, dead events by reason.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE dialpad.webhook_events ADD COLUMN discarded_at timestamptz, ADD COLUMN discard_reason text;
COMMENT ON COLUMN dialpad.webhook_events.discarded_at IS 'Set when a DBA discarded the event (dialpad.discard_event): acknowledged, no longer counted as dead, kept for audit until retention drops its partition.';
COMMENT ON COLUMN dialpad.webhook_events.discard_reason IS 'Why the event was discarded (the reason given to dialpad.discard_event or dialpad.discard_dead_events).';

CREATE FUNCTION dialpad.index_like_default(def regclass, partition text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    def_name text := (SELECT relname FROM pg_class WHERE oid = def);
    idx record;
    idx_name text;
BEGIN
    FOR idx IN SELECT i.indexrelid, i.indisprimary, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = def ORDER BY c.relname LOOP
        idx_name := partition || substr(idx.relname, length(def_name) + 1);
        EXECUTE regexp_replace(pg_get_indexdef(idx.indexrelid), '^(CREATE (UNIQUE )?INDEX )\S+ ON \S+ ',
                               format('\1%I ON dialpad.%I ', idx_name, partition));
        IF idx.indisprimary THEN
            EXECUTE format('ALTER TABLE dialpad.%I ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I', partition, idx_name, idx_name);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION dialpad.index_like_default(regclass, text) IS
    'Gives the table dialpad.<partition> the indexes (and primary key) of the DEFAULT partition def; used when pg_dialpad makes a partition.';

CREATE FUNCTION dialpad.hold_unfinished_events(expired regclass, range_to timestamptz) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD' AS $$
DECLARE
    held regclass := to_regclass('dialpad.webhook_events_held');
    def regclass := (SELECT p.partition FROM dialpad.partitions p
                      WHERE p.parent = 'dialpad.webhook_events'::regclass AND p.is_default);
    cols text := (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                   WHERE attrelid = 'dialpad.webhook_events'::regclass AND attnum > 0 AND NOT attisdropped);
    unfinished constant text := 'processed_at IS NULL AND discarded_at IS NULL';
    opts text[];
    n bigint;
BEGIN
    -- Counted on the partial indexes of pending and dead events, not by reading the partition.
    EXECUTE format('SELECT (SELECT count(*) FROM %1$s WHERE processed_at IS NULL AND dead_at IS NULL)
                         + (SELECT count(*) FROM %1$s WHERE dead_at IS NOT NULL AND processed_at IS NULL AND discarded_at IS NULL)',
                   expired) INTO n;
    IF n = 0 AND held IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'CREATE TABLE dialpad.webhook_events_held_next (LIKE dialpad.webhook_events INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)';
    opts := (SELECT reloptions FROM pg_class WHERE oid = def);
    IF opts IS NOT NULL THEN
        EXECUTE format('ALTER TABLE dialpad.webhook_events_held_next SET (%s)', array_to_string(opts, ', '));
    END IF;
    IF held IS NOT NULL THEN
        EXECUTE format('INSERT INTO dialpad.webhook_events_held_next (%s) SELECT %s FROM %s WHERE %s', cols, cols, held, unfinished);
        EXECUTE format('ALTER TABLE dialpad.webhook_events DETACH PARTITION %s', held);
        EXECUTE format('DROP TABLE %s', held);
    END IF;
    EXECUTE format('INSERT INTO dialpad.webhook_events_held_next (%s) SELECT %s FROM %s WHERE %s', cols, cols, expired, unfinished);
    EXECUTE format('ALTER TABLE dialpad.webhook_events DETACH PARTITION %s', expired);
    ALTER TABLE dialpad.webhook_events_held_next RENAME TO webhook_events_held;
    PERFORM dialpad.index_like_default(def, 'webhook_events_held');
    EXECUTE format('COMMENT ON TABLE dialpad.webhook_events_held IS %L',
                   format('Partition of dialpad.webhook_events: the pending and dead-lettered events of partitions retention dropped (received_at before %s). Rebuilt by dialpad.run_maintenance().', range_to));
    EXECUTE format('ALTER TABLE dialpad.webhook_events ATTACH PARTITION dialpad.webhook_events_held FOR VALUES FROM (MINVALUE) TO (%L)', range_to);
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.hold_unfinished_events(regclass, timestamptz) IS
    'Used by dialpad.run_maintenance(): moves the pending and dead-lettered events of an expired partition of dialpad.webhook_events, unchanged, into the holding partition dialpad.webhook_events_held (rebuilt to cover everything before range_to), and detaches the expired partition. Returns how many events it held; NULL when there was nothing to do.';

CREATE OR REPLACE FUNCTION dialpad.add_partition(parent regclass, t timestamptz, width interval,
                                      OUT partition text, OUT range_from timestamptz,
                                      OUT range_to timestamptz, OUT moved bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD' AS $$
#variable_conflict use_variable
DECLARE
    col text := CASE parent WHEN 'dialpad.webhook_events'::regclass THEN 'received_at' ELSE 'rejected_at' END;
    base text := (SELECT relname FROM pg_class WHERE oid = parent);
    def regclass;
    opts text[];
    has_rows boolean;
BEGIN
    IF parent NOT IN ('dialpad.webhook_events'::regclass, 'dialpad.rejected_transitions'::regclass) THEN
        RAISE EXCEPTION '% is not partitioned by pg_dialpad', parent USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM dialpad.partitions p WHERE p.parent = add_partition.parent AND NOT p.is_default
                 AND t >= p.range_from AND t < p.range_to) THEN
        RETURN;
    END IF;
    -- Writers of the table wait until this transaction ends (so do other maintenance runs):
    -- an INSERT that had already chosen the DEFAULT partition for a row of the new range
    -- would otherwise fail the partition check once the range is attached. When rows are to
    -- move out of the DEFAULT partition, readers wait too (see below), and that lock is
    -- taken at once rather than after the writers' one: a processor holding the table for
    -- reading and waiting to write would otherwise deadlock with this upgrade.
    def := (SELECT p.partition FROM dialpad.partitions p WHERE p.parent = add_partition.parent AND p.is_default);
    IF def IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s WHERE %I >= $1 AND %I < $2)', def, col, col)
           INTO has_rows USING dialpad.partition_start(t, width), dialpad.partition_start(t, width) + width;
    END IF;
    EXECUTE format('LOCK TABLE ONLY %s IN %s MODE', parent,
                   CASE WHEN has_rows THEN 'ACCESS EXCLUSIVE' ELSE 'SHARE ROW EXCLUSIVE' END);
    IF EXISTS (SELECT 1 FROM dialpad.partitions p WHERE p.parent = add_partition.parent AND NOT p.is_default
                 AND t >= p.range_from AND t < p.range_to) THEN
        RETURN;
    END IF;
    range_from := GREATEST(dialpad.partition_start(t, width),
                           (SELECT max(p.range_to) FROM dialpad.partitions p
                             WHERE p.parent = add_partition.parent AND p.range_to <= t));
    range_to := LEAST(dialpad.partition_start(t, width) + width,
                      (SELECT min(p.range_from) FROM dialpad.partitions p
                        WHERE p.parent = add_partition.parent AND p.range_from > t));
    partition := format('%s_p%s', base,
                        CASE WHEN range_from = date_trunc('day', range_from) THEN to_char(range_from, 'YYYYMMDD')
                             ELSE to_char(range_from, 'YYYYMMDD_HH24MI') END);
    -- A table detached by retention may still carry the name: take the next free one.
    WHILE to_regclass(format('dialpad.%I', partition)) IS NOT NULL LOOP
        partition := partition || '_';
    END LOOP;
    SELECT p.partition, c.reloptions INTO def, opts
      FROM dialpad.partitions p JOIN pg_class c ON c.oid = p.partition
     WHERE p.parent = add_partition.parent AND p.is_default;
    IF def IS NULL THEN
        RAISE EXCEPTION '% has no DEFAULT partition', parent
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'pg_dialpad makes partitions after the model of the DEFAULT partition: re-create it with the indexes of sql/schema.sql.';
    END IF;

    EXECUTE format('CREATE TABLE dialpad.%I (LIKE %s INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                   partition, parent);
    IF opts IS NOT NULL THEN
        EXECUTE format('ALTER TABLE dialpad.%I SET (%s)', partition, array_to_string(opts, ', '));
    END IF;
    -- The range as a CHECK constraint: ATTACH then needs no scan of the new table.
    EXECUTE format('ALTER TABLE dialpad.%I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)',
                   partition, partition || '_range', col, range_from, col, range_to);
    -- Rows to move: readers wait too, until the move commits. A query planned between the
    -- ATTACH and the commit would read the DEFAULT partition without the new one and, with
    -- a snapshot taken after the commit, miss the moved rows (the reduced lock of ATTACH
    -- PARTITION is safe only when no rows move).
    IF NOT coalesce(has_rows, false) THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s WHERE %I >= $1 AND %I < $2)', def, col, col)
           INTO has_rows USING range_from, range_to;
        IF has_rows THEN
            RETURN;  -- rows arrived before the lock: the next run moves them, under the lock above
        END IF;
    END IF;
    EXECUTE format('WITH m AS (DELETE FROM ONLY %s WHERE %I >= $1 AND %I < $2 RETURNING *) INSERT INTO dialpad.%I SELECT * FROM m',
                   def, col, col, partition)
      USING range_from, range_to;
    GET DIAGNOSTICS moved = ROW_COUNT;
    -- The DEFAULT partition's indexes, built after the rows are in (see sql/schema.sql).
    PERFORM dialpad.index_like_default(def, partition);
    EXECUTE format('COMMENT ON TABLE dialpad.%I IS %L', partition,
                   format('Partition of %s: %s in [%s, %s). Made by dialpad.run_maintenance().',
                          parent, col, range_from, range_to));
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION dialpad.%I FOR VALUES FROM (%L) TO (%L)',
                   parent, partition, range_from, range_to);
    EXECUTE format('ALTER TABLE dialpad.%I DROP CONSTRAINT %I', partition, partition || '_range');
END
$$;
COMMENT ON FUNCTION dialpad.add_partition(regclass, timestamptz, interval) IS
    'Creates the partition of dialpad.webhook_events or dialpad.rejected_transitions that holds time t (width wide, shortened to fit between existing partitions) and moves into it the rows of the DEFAULT partition in its range. Does nothing when a partition already holds t.';

CREATE OR REPLACE FUNCTION dialpad.run_maintenance()
RETURNS TABLE (action text, partition text, range_from timestamptz, range_to timestamptz, rows bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD'
    SET lock_timeout = '2s' AS $$
#variable_conflict use_column
DECLARE
    width interval;
    ahead integer;
    keep interval;
    mode text;
    tbl regclass;
    col text;
    t timestamptz;
    times timestamptz[];
    p record;
    added record;
    held bigint;
BEGIN
    IF dialpad.version_info() NOT LIKE format('pg_dialpad %s %%', (SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad')) THEN
        RAISE EXCEPTION 'pg_dialpad''s library (%) and SQL (%) versions differ', dialpad.version_info(),
                (SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run ALTER EXTENSION pg_dialpad UPDATE (or restart PostgreSQL if the new library is not loaded yet).';
    END IF;
    width := make_interval(mins => (SELECT setting::int FROM pg_settings WHERE name = 'dialpad.partition_interval'));
    ahead := (SELECT setting::int FROM pg_settings WHERE name = 'dialpad.partitions_ahead');
    keep := make_interval(mins => (SELECT setting::int FROM pg_settings WHERE name = 'dialpad.retention'));
    mode := (SELECT setting FROM pg_settings WHERE name = 'dialpad.retention_mode');
    -- On a Citus worker node the coordinator keeps the partitions of the distributed tables
    -- (README, "Scaling out with Citus"): partitions made here would collide with its own.
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) OPERATOR(pg_catalog.<>) 0 THEN
            RETURN;
        END IF;
    END IF;

    FOREACH tbl IN ARRAY ARRAY['dialpad.webhook_events'::regclass, 'dialpad.rejected_transitions'::regclass] LOOP
        col := CASE tbl WHEN 'dialpad.webhook_events'::regclass THEN 'received_at' ELSE 'rejected_at' END;
        -- The parent before its DEFAULT partition, in the order DROP EXTENSION and every
        -- writer lock them: reading the partition first deadlocked with a DROP.
        EXECUTE format('LOCK TABLE ONLY %s IN ACCESS SHARE MODE', tbl);
        -- Rows waiting in the DEFAULT partition, oldest first, then the partitions ahead.
        EXECUTE format('SELECT array_agg(DISTINCT dialpad.partition_start(%I, $1) ORDER BY dialpad.partition_start(%I, $1)) FROM ONLY %s',
                       col, col, (SELECT q.partition FROM dialpad.partitions q WHERE q.parent = tbl AND q.is_default))
           INTO times USING width;
        times := coalesce(times, '{}') || ARRAY(SELECT GREATEST(now(), dialpad.partition_start(now(), width) + width * i)
                                                   FROM generate_series(0, ahead) AS i ORDER BY i);
        FOREACH t IN ARRAY times LOOP
            BEGIN
                SELECT * INTO added FROM dialpad.add_partition(tbl, t, width);
                IF added.partition IS NOT NULL THEN
                    action := 'created'; partition := added.partition; range_from := added.range_from;
                    range_to := added.range_to; rows := added.moved;
                    RETURN NEXT;
                END IF;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                action := 'busy'; partition := tbl::text; range_from := t; range_to := t + width; rows := NULL;
                RETURN NEXT;
            END;
        END LOOP;

        CONTINUE WHEN keep <= interval '0';
        FOR p IN SELECT q.partition, q.range_from, q.range_to, q.estimated_rows FROM dialpad.partitions q
                  WHERE q.parent = tbl AND NOT q.is_default AND q.range_from > '-infinity' AND q.range_to <= now() - keep
                  ORDER BY q.range_from
        LOOP
            action := NULL; partition := p.partition::text; range_from := p.range_from; range_to := p.range_to;
            BEGIN
                -- The parent first, as every writer locks it: no deadlock with them.
                EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', tbl);
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.partition);
                held := NULL;
                IF tbl = 'dialpad.webhook_events'::regclass THEN
                    -- Its unfinished events move to the holding partition first (detaches it).
                    held := dialpad.hold_unfinished_events(p.partition, p.range_to);
                END IF;
                IF mode = 'detach' THEN
                    IF held IS NULL THEN
                        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', tbl, p.partition);
                    END IF;
                    action := 'detached'; rows := p.estimated_rows;
                ELSE
                    EXECUTE format('DROP TABLE %s', p.partition);
                    action := 'dropped'; rows := p.estimated_rows;
                END IF;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                action := 'busy'; rows := NULL; held := NULL;
            END;
            RETURN NEXT;
            IF held IS NOT NULL THEN
                action := 'held'; partition := 'dialpad.webhook_events_held'; range_from := '-infinity';
                range_to := p.range_to; rows := held;
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;

    -- Leg columns an upgrade left to fill (sql/analytics.sql): one slice per run; the workers
    -- run maintenance again at once while this reports work done.
    rows := dialpad.backfill_legs(5000);
    IF rows > 0 THEN
        action := 'backfilled'; partition := 'dialpad.calls'; range_from := NULL; range_to := NULL;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION dialpad.run_maintenance() IS
    'Creates the partitions of dialpad.webhook_events and dialpad.rejected_transitions for the next dialpad.partitions_ahead intervals, moves rows out of the DEFAULT partitions into partitions of their own, and drops (or detaches, per dialpad.retention_mode) partitions older than dialpad.retention, whatever they hold: their pending and dead-lettered events first move, unchanged, into the holding partition dialpad.webhook_events_held. Returns what it did: created, dropped, detached, held (rows = the events of the partition just dropped or detached that moved to the holding partition), busy (a lock was not had within 2 s; tried again next time), backfilled (rows = calls whose leg columns were filled from the audit log after an upgrade, 5,000 per run). The workers run it every dialpad.maintenance_interval, and again at once while it backfills.';

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

CREATE OR REPLACE VIEW dialpad.dead_events WITH (security_invoker = true) AS
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

CREATE OR REPLACE FUNCTION dialpad.retry_event(event_id bigint) RETURNS boolean
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

DROP FUNCTION dialpad.retry_dead_events();

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

CREATE OR REPLACE VIEW dialpad.queue_stats WITH (security_invoker = true) AS
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
ALTER TABLE dialpad.calls ADD COLUMN transferred_from_id text;
COMMENT ON COLUMN dialpad.calls.transferred_from_id IS 'transferred_from.id: set only on the leg a transfer created (Dialpad marks is_transferred on the leg transferred away too). dialpad.logical_calls.transfers counts these legs.';
COMMENT ON COLUMN dialpad.logical_calls.transfers IS 'How many transfers the call went through: its legs that a transfer created (transferred_from_id set). Dialpad marks is_transferred on both legs of a transfer; counting that would count each transfer twice.';
CREATE OR REPLACE VIEW dialpad.logical_calls_from_legs WITH (security_invoker = true) AS
WITH leg0 AS (
    SELECT c.*,
           c.dialpad_call_id = c.logical_call_id AS is_root,
           -- answered: connected with talk time (IVR and queue hops have none), not voicemail
           c.connected_at IS NOT NULL AND COALESCE(c.talk_seconds, 1) > 0
               AND COALESCE(c.end_state NOT IN ('voicemail', 'voicemail_uploaded'), true) AS answered,
           COALESCE(s.is_terminal, false) AS terminal,
           COALESCE(c.ended_at, 'infinity') AS end_or_open
      FROM dialpad.calls c
      LEFT JOIN dialpad.call_statuses s ON s.status = c.status
), leg1 AS (
    SELECT leg0.*,
           max(connected_at) FILTER (WHERE is_root AND answered) OVER w AS root_connected,
           max(end_or_open) FILTER (WHERE is_root) OVER w AS root_end,
           max(target_type) FILTER (WHERE is_root) OVER w AS root_type,
           min(connected_at) FILTER (WHERE answered AND NOT is_root) OVER w AS others_connected
      FROM leg0
    WINDOW w AS (PARTITION BY logical_call_id)
), leg2 AS (
    -- carrier: a root leg that only carried the caller to the agents (a department, office or
    -- call center; or, when its target type is unknown, one that connected only when another
    -- leg answered); its talk is theirs.
    SELECT leg1.*,
           root_connected IS NOT NULL AND others_connected IS NOT NULL
               AND COALESCE(root_type NOT IN ('user', 'contact'), root_connected >= others_connected) AS carrier
      FROM leg1
), leg3 AS (
    -- counted: the legs whose talk makes the conversation. Not a carrier root; not a leg that
    -- joined a person's root leg and ended within it (a conference: the caller was talking
    -- on the root leg all along); every leg of a transfer.
    -- answers: the legs that can have answered the caller (all answering legs but a carrier).
    SELECT leg2.*,
           answered AND NOT (is_root AND carrier)
               AND (is_root OR carrier OR root_connected IS NULL
                    OR NOT (connected_at >= root_connected AND end_or_open <= root_end)) AS counted,
           answered AND NOT (is_root AND carrier) AS answers
      FROM leg2
), leg AS (
    -- the first leg to answer
    SELECT leg3.*,
           first_value(target_id) OVER by_answer AS first_agent_id,
           first_value(target_name) OVER by_answer AS first_agent_name
      FROM leg3
    WINDOW by_answer AS (PARTITION BY logical_call_id ORDER BY answers DESC, connected_at, dialpad_call_id)
), g AS (
    SELECT logical_call_id,
           count(*) AS legs,
           count(*) FILTER (WHERE transferred_from_id IS NOT NULL) AS transfers,
           bool_and(terminal) AS ended,
           bool_or(answered) AS answered,
           bool_or(end_state = 'blocked') AS blocked,
           bool_or(status = 'voicemail' OR end_state IN ('voicemail', 'voicemail_uploaded')
                   OR voicemail_link IS NOT NULL OR voicemail_recording_url IS NOT NULL) AS voicemail,
           bool_or(rang_at IS NOT NULL) AS rang,
           min(COALESCE(started_at, queued_at, rang_at, connected_at, ended_at, last_event_at, created_at)) AS started_at,
           max(ended_at) AS ended_at,
           max(last_event_at) AS last_event_at,
           sum(talk_seconds) FILTER (WHERE counted) AS talk_seconds,
           sum(hold_seconds) FILTER (WHERE counted) AS hold_seconds,
           min(connected_at) FILTER (WHERE answers) AS answered_at,
           min(first_agent_id) FILTER (WHERE answers) AS agent_id,
           min(first_agent_name) FILTER (WHERE answers) AS agent_name,
           -- the first counted leg's call recording, else the first leg's (by call id) that has one
           COALESCE((array_agg(recording_url ORDER BY connected_at, dialpad_call_id)
                        FILTER (WHERE counted AND recording_url IS NOT NULL))[1],
                    (array_agg(recording_url ORDER BY dialpad_call_id) FILTER (WHERE recording_url IS NOT NULL))[1])
               AS recording_url,
           COALESCE((array_agg(voicemail_link ORDER BY dialpad_call_id) FILTER (WHERE voicemail_link IS NOT NULL))[1],
                    (array_agg(voicemail_recording_url ORDER BY dialpad_call_id)
                        FILTER (WHERE voicemail_recording_url IS NOT NULL))[1]) AS voicemail_link,
           -- the root leg's, else that of the leg with the smallest call id that has one
           COALESCE(min(direction) FILTER (WHERE is_root),
                    (array_agg(direction ORDER BY dialpad_call_id) FILTER (WHERE direction IS NOT NULL))[1]) AS direction,
           COALESCE(min(external_number) FILTER (WHERE is_root),
                    (array_agg(external_number ORDER BY dialpad_call_id) FILTER (WHERE external_number IS NOT NULL))[1])
               AS external_number,
           COALESCE(min(internal_number) FILTER (WHERE is_root),
                    (array_agg(internal_number ORDER BY dialpad_call_id) FILTER (WHERE internal_number IS NOT NULL))[1])
               AS internal_number,
           COALESCE(min(contact_id) FILTER (WHERE is_root),
                    (array_agg(contact_id ORDER BY dialpad_call_id) FILTER (WHERE contact_id IS NOT NULL))[1]) AS contact_id,
           COALESCE(min(contact_name) FILTER (WHERE is_root),
                    (array_agg(contact_name ORDER BY dialpad_call_id) FILTER (WHERE contact_name IS NOT NULL))[1])
               AS contact_name,
           COALESCE(min(source) FILTER (WHERE is_root),
                    (array_agg(source ORDER BY dialpad_call_id) FILTER (WHERE source IS NOT NULL))[1]) AS source
      FROM leg
     GROUP BY logical_call_id
)
SELECT logical_call_id,
       direction,
       CASE WHEN NOT ended THEN 'in_progress'
            WHEN answered THEN 'answered'
            WHEN blocked THEN 'blocked'
            WHEN voicemail THEN 'voicemail'
            WHEN direction = 'outbound' THEN 'no_answer'
            WHEN NOT rang THEN 'abandoned'
            ELSE 'missed' END AS outcome,
       started_at,
       answered_at,
       CASE WHEN ended THEN ended_at END AS ended_at,
       round(EXTRACT(epoch FROM answered_at - started_at), 3)::numeric(14, 3) AS wait_seconds,
       talk_seconds::numeric(14, 3) AS talk_seconds,
       hold_seconds::numeric(14, 3) AS hold_seconds,
       legs::integer AS legs,
       transfers::integer AS transfers,
       agent_id AS answered_by_target_id,
       agent_name AS answered_by_name,
       external_number,
       internal_number,
       contact_id,
       contact_name,
       recording_url,
       voicemail_link,
       source,
       last_event_at
  FROM g;
CREATE OR REPLACE FUNCTION dialpad.backfill_legs(max_calls integer DEFAULT 5000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ids bigint[];
BEGIN
    -- Nothing to fill (the usual case; and on Citus, where dialpad.distribute() comes after
    -- the fill, the locking join below could not run).
    IF NOT EXISTS (SELECT FROM dialpad.leg_backfill) THEN
        RETURN 0;
    END IF;
    ids := ARRAY(SELECT c.dialpad_call_id
                   FROM dialpad.leg_backfill b JOIN dialpad.calls c ON c.dialpad_call_id = b.dialpad_call_id
                  ORDER BY b.dialpad_call_id LIMIT max_calls FOR UPDATE OF c SKIP LOCKED);
    IF cardinality(ids) = 0 THEN
        -- what is left names calls deleted since, or held right now
        DELETE FROM dialpad.leg_backfill b
         WHERE NOT EXISTS (SELECT 1 FROM dialpad.calls c WHERE c.dialpad_call_id = b.dialpad_call_id);
        RETURN 0;
    END IF;
    DELETE FROM dialpad.leg_backfill WHERE dialpad_call_id = ANY (ids);
    WITH ev AS (
        SELECT e.id, e.call_id, e.payload,
               CASE WHEN pg_catalog.jsonb_typeof(e.payload -> 'event_timestamp') = 'number'
                    THEN (e.payload ->> 'event_timestamp')::numeric END AS ts
          FROM dialpad.webhook_events e
         WHERE e.call_id = ANY (ids) AND e.processed_at IS NOT NULL AND e.duplicate_of IS NULL
    ), kv AS (
        SELECT DISTINCT ON (ev.call_id, k.key) ev.call_id, k.key, k.value
          FROM ev, pg_catalog.jsonb_each(ev.payload) k
         WHERE k.key IN ('talk_time', 'hold_time', 'total_duration', 'date_rang', 'date_first_rang',
                         'date_queued', 'is_transferred', 'transferred_from', 'group_id', 'labels', 'csat_score')
           AND pg_catalog.jsonb_typeof(k.value) <> 'null'
         ORDER BY ev.call_id, k.key, ev.ts DESC NULLS FIRST, ev.id DESC
    ), num AS (
        -- numbers, and strings holding one, as numeric
        SELECT call_id, key, value,
               CASE WHEN pg_catalog.jsonb_typeof(value) = 'number' THEN (value #>> '{}')::numeric
                    WHEN pg_catalog.jsonb_typeof(value) = 'string'
                         AND (value #>> '{}') ~ '^\s*[0-9]+(\.[0-9]+)?\s*$' THEN pg_catalog.btrim(value #>> '{}')::numeric
               END AS n
          FROM kv
    ), f AS (
        SELECT call_id,
               max(round(n / 1000, 3)) FILTER (WHERE key = 'talk_time' AND n < 1e14) AS talk,
               max(round(n / 1000, 3)) FILTER (WHERE key = 'hold_time' AND n < 1e14) AS hold,
               max(round(n / 1000, 3)) FILTER (WHERE key = 'total_duration' AND n < 1e14) AS total,
               max(pg_catalog.to_timestamp(n / 1000)) FILTER (WHERE key = 'date_rang' AND n BETWEEN 0 AND 253402300799999) AS rang,
               max(pg_catalog.to_timestamp(n / 1000)) FILTER (WHERE key = 'date_first_rang' AND n BETWEEN 0 AND 253402300799999) AS first_rang,
               max(pg_catalog.to_timestamp(n / 1000)) FILTER (WHERE key = 'date_queued' AND n BETWEEN 0 AND 253402300799999) AS queued,
               bool_or(CASE WHEN value IN ('true', '"true"', '1') THEN true WHEN value IN ('false', '"false"', '0') THEN false END)
                   FILTER (WHERE key = 'is_transferred') AS transferred,
               max(value ->> 'id') FILTER (WHERE key = 'transferred_from' AND pg_catalog.jsonb_typeof(value) = 'object'
                                             AND pg_catalog.jsonb_typeof(value -> 'id') IN ('string', 'number')
                                             AND pg_catalog.length(value ->> 'id') <= 2000) AS transferred_from_id,
               max(value #>> '{}') FILTER (WHERE key = 'group_id' AND pg_catalog.jsonb_typeof(value) IN ('string', 'number')) AS group_id,
               (max(CASE pg_catalog.jsonb_typeof(value)
                        WHEN 'array' THEN (SELECT pg_catalog.jsonb_agg(x #>> '{}') FROM pg_catalog.jsonb_array_elements(value) x
                                            WHERE pg_catalog.jsonb_typeof(x) IN ('string', 'number', 'boolean'))
                        WHEN 'string' THEN pg_catalog.jsonb_build_array(value #>> '{}') END::text)
                   FILTER (WHERE key = 'labels'))::jsonb AS labels,
               max(n) FILTER (WHERE key = 'csat_score' AND abs(n) < 1e9) AS csat
          FROM num
         GROUP BY call_id
    ), rec AS (
        -- every recording once (the newest event's copy of it), in the order they started
        SELECT DISTINCT ON (ev.call_id, COALESCE(r ->> 'id', r ->> 'url')) ev.call_id, r
          FROM ev, pg_catalog.jsonb_array_elements(
                       CASE WHEN pg_catalog.jsonb_typeof(ev.payload -> 'recording_details') = 'array'
                            THEN ev.payload -> 'recording_details' ELSE '[]' END) r
         WHERE pg_catalog.jsonb_typeof(r) = 'object' AND COALESCE(r ->> 'id', r ->> 'url') IS NOT NULL
         ORDER BY ev.call_id, COALESCE(r ->> 'id', r ->> 'url'), ev.ts DESC NULLS FIRST, ev.id DESC
    ), recs AS (
        SELECT call_id,
               pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                   'id', r ->> 'id', 'url', r ->> 'url', 'type', r ->> 'recording_type',
                   'start_time', CASE WHEN pg_catalog.jsonb_typeof(r -> 'start_time') = 'number'
                                      THEN pg_catalog.trunc((r ->> 'start_time')::numeric) END,
                   'duration_seconds', CASE WHEN pg_catalog.jsonb_typeof(r -> 'duration') = 'number'
                                            THEN pg_catalog.trim_scale(round((r ->> 'duration')::numeric / 1000, 3)) END))
                   ORDER BY CASE WHEN pg_catalog.jsonb_typeof(r -> 'start_time') = 'number' THEN (r ->> 'start_time')::numeric END
                            NULLS LAST, r ->> 'id', r ->> 'url') AS list,
               (array_agg(r ->> 'url' ORDER BY (r ->> 'recording_type') = 'admincallrecording',
                          CASE WHEN pg_catalog.jsonb_typeof(r -> 'start_time') = 'number' THEN (r ->> 'start_time')::numeric END NULLS LAST, r ->> 'id')
                   FILTER (WHERE r ->> 'url' IS NOT NULL
                             AND COALESCE(r ->> 'recording_type', 'callrecording') IN ('callrecording', 'admincallrecording')))[1] AS call_url,
               (array_agg(r ->> 'url' ORDER BY CASE WHEN pg_catalog.jsonb_typeof(r -> 'start_time') = 'number' THEN (r ->> 'start_time')::numeric END NULLS LAST, r ->> 'id')
                   FILTER (WHERE r ->> 'url' IS NOT NULL AND r ->> 'recording_type' = 'voicemail'))[1] AS voicemail_url
          FROM rec
         GROUP BY call_id
    ), ends AS (
        -- the state of the first event (in event order) that maps to the leg's terminal status
        SELECT DISTINCT ON (c.dialpad_call_id) c.dialpad_call_id AS call_id, ev.payload ->> 'state' AS state
          FROM dialpad.calls c
          JOIN dialpad.call_statuses s ON s.status = c.status AND s.is_terminal
          JOIN ev ON ev.call_id = c.dialpad_call_id
          JOIN dialpad.state_mapping m ON m.state = ev.payload ->> 'state'
         WHERE c.status IN (m.status, m.status_if_unanswered_inbound, m.status_if_unanswered_outbound)
         ORDER BY c.dialpad_call_id, ev.ts NULLS LAST, ev.id
    )
    UPDATE dialpad.calls c
       SET talk_seconds = f.talk, hold_seconds = f.hold, total_duration_seconds = f.total,
           rang_at = COALESCE(f.rang, f.first_rang), queued_at = f.queued, is_transferred = f.transferred,
           transferred_from_id = f.transferred_from_id,
           group_id = f.group_id, labels = f.labels, csat_score = f.csat,
           recordings = recs.list,
           recording_url = CASE WHEN recs.list IS NULL THEN c.recording_url ELSE recs.call_url END,
           voicemail_recording_url = recs.voicemail_url,
           end_state = ends.state
      FROM pg_catalog.unnest(ids) AS k(call_id)
      LEFT JOIN f USING (call_id)
      LEFT JOIN recs USING (call_id)
      LEFT JOIN ends USING (call_id)
     WHERE c.dialpad_call_id = k.call_id;
    RETURN cardinality(ids);
END
$fn$;
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
COMMENT ON FUNCTION dialpad.ingest_stats() IS
    'Deliveries accepted, duplicate and rejected by dialpad.ingest_webhook in this database: those counted in dialpad.ingest_counters plus those not flushed there yet (behind the dialpad.ingest_stats view).';
COMMENT ON FUNCTION dialpad.ingest_counters_unflushed() IS
    'The deliveries of this database counted in shared memory and not yet written to dialpad.ingest_counters, by source, outcome and reason; empty without shared_preload_libraries.';
COMMENT ON FUNCTION dialpad.flush_ingest_counters() IS
    'Writes the ingest counts of shared memory to dialpad.ingest_counters now (the first background worker does it every 5 seconds and when it stops); returns how many deliveries it wrote, 0 when another session is flushing. Errors: 25006 on a hot standby.';
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

-- Ingest counters: readers read them; the first worker (dialpad_worker) and admins flush them.
REVOKE EXECUTE ON FUNCTION dialpad.ingest_counters_unflushed(), dialpad.flush_ingest_counters() FROM PUBLIC;
GRANT SELECT ON dialpad.ingest_counters, dialpad.ingest_stats_by_source TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.ingest_counters_unflushed() TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.flush_ingest_counters() TO dialpad_admin, dialpad_worker;
GRANT INSERT, UPDATE ON dialpad.ingest_counters TO dialpad_admin, dialpad_worker;

-- ---------------------------------------------------------------------------------------------
-- Re-deriving calls after a rule change (issue 26, part 3; sql/rederive.sql).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.rederive_jobs (
    id              bigserial PRIMARY KEY,
    requested_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    requested_by    name NOT NULL DEFAULT CURRENT_USER,
    received_from   timestamptz,
    received_until  timestamptz,
    source          text,
    call_ids        bigint[],
    calls           bigint NOT NULL,
    rederived       bigint NOT NULL DEFAULT 0,
    left_as_they_are bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    last_error      text,
    finished_at     timestamptz
);
COMMENT ON TABLE dialpad.rederive_jobs IS
    'One row per dialpad.rederive_calls() request: what it asked for, how many calls it listed, how many were re-derived, left as they are (their history is partly dropped by retention) or failed, and when it finished.';

CREATE TABLE dialpad.rederive_queue (
    job_id  bigint NOT NULL REFERENCES dialpad.rederive_jobs (id) ON DELETE CASCADE,
    call_id bigint NOT NULL,
    PRIMARY KEY (job_id, call_id)
);
COMMENT ON TABLE dialpad.rederive_queue IS
    'The calls of dialpad.rederive_jobs still to re-derive; a row goes when its call is done.';

CREATE FUNCTION dialpad.rederive_calls(since timestamptz, until timestamptz DEFAULT now(),
                                       source text DEFAULT NULL, call_ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job bigint;
    n bigint;
    distributed boolean := false;
BEGIN
    IF since IS NULL OR until IS NULL OR until < since THEN
        RAISE EXCEPTION 'a re-derivation needs a window of time received: since <= until, neither NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ''dialpad.calls''::regclass)'
           INTO distributed;
    END IF;
    IF distributed THEN
        RAISE EXCEPTION 're-deriving calls is not supported once the tables are distributed with Citus'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    INSERT INTO dialpad.rederive_jobs (received_from, received_until, source, call_ids, calls)
    VALUES (since, until, rederive_calls.source, rederive_calls.call_ids, 0)
    RETURNING id INTO job;
    -- The calls that have a row and an applied event received in the window.
    INSERT INTO dialpad.rederive_queue (job_id, call_id)
    SELECT DISTINCT job, e.call_id
      FROM dialpad.webhook_events e
     WHERE e.received_at >= since AND e.received_at < until
       AND e.processed_at IS NOT NULL AND e.duplicate_of IS NULL AND e.call_id IS NOT NULL
       AND (rederive_calls.source IS NULL OR e.source = rederive_calls.source)
       AND (rederive_calls.call_ids IS NULL OR e.call_id = ANY (rederive_calls.call_ids))
       AND EXISTS (SELECT FROM dialpad.calls c WHERE c.dialpad_call_id = e.call_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE dialpad.rederive_jobs SET calls = n, finished_at = CASE WHEN n = 0 THEN now() END WHERE id = job;
    PERFORM dialpad.wake_workers();
    RETURN job;
END
$$;
COMMENT ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]) IS
    'Lists for re-derivation the calls with an applied event received in [since, until) (and through source, and among call_ids, when given): the workers (or dialpad.rederive_step()) re-apply today''s rules to each from its whole history in the audit log, in slices, beside ingestion. Returns the job id; progress in dialpad.rederive_progress. Errors: 22023 bad window, 0A000 on distributed (Citus) tables.';

CREATE VIEW dialpad.rederive_progress WITH (security_invoker = true) AS
SELECT j.id AS job_id, j.requested_at, j.requested_by, j.received_from, j.received_until, j.source,
       j.calls, j.rederived, j.left_as_they_are, j.failed,
       (SELECT pg_catalog.count(*) FROM dialpad.rederive_queue q WHERE q.job_id OPERATOR(pg_catalog.=) j.id) AS waiting,
       j.finished_at, j.last_error
  FROM dialpad.rederive_jobs j;
COMMENT ON VIEW dialpad.rederive_progress IS
    'Each re-derivation job: calls listed, re-derived, left as they are (history partly dropped by retention), failed (last_error says why), still waiting, and when it finished.';

SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_jobs_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_queue', '');

CREATE FUNCTION dialpad.rederive_step(max_calls integer DEFAULT 200) RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'rederive_step_wrapper';
ALTER FUNCTION dialpad.rederive_step(integer) SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dialpad.rederive_step(integer) IS
    'Re-derives up to max_calls of the calls dialpad.rederive_calls() listed (the workers call it; without workers, a dialpad_worker session may), in the caller''s transaction; returns how many left the list, 0 when none is left. Calls another processor holds stay listed. Errors: 22023 negative max_calls, 55000 library and SQL versions differ.';

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
COMMENT ON FUNCTION dialpad.worker_stats() IS
    'Per-worker counters from shared memory (behind the dialpad.worker_stats view).';
REVOKE EXECUTE ON FUNCTION dialpad.worker_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.worker_stats() TO dialpad_reader;

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
GRANT EXECUTE ON FUNCTION dialpad.worker_node_stats() TO dialpad_reader;

CREATE VIEW dialpad.worker_stats WITH (security_invoker = true) AS
SELECT 'local'::text AS node, s.* FROM dialpad.worker_stats() s
UNION ALL
SELECT * FROM dialpad.worker_node_stats();
COMMENT ON VIEW dialpad.worker_stats IS
    'Per worker (from shared memory, since server start): node (local: this server; on a Citus coordinator, also each worker node as host:port), pid, events handled, batches, failed events, dead-lettered events, rejected transitions, last batch time, start time, and when the worker last read its settings (a reload is taken once it is later than the reload).';
GRANT SELECT ON dialpad.worker_stats TO dialpad_reader;
