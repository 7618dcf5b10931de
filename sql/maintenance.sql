-- Time partitions and retention of the inbox and of rejected_transitions (docs/operations.md,
-- "Retention and partitions"). Expired data goes by dropping (or detaching) whole partitions, never by a
-- DELETE; rows no partition covers wait in the DEFAULT partition, never refused.

CREATE VIEW dialpad.partitions WITH (security_invoker = true) AS
SELECT i.inhparent::pg_catalog.regclass AS parent,
       c.oid::pg_catalog.regclass AS partition,
       b.is_default,
       b.range_from,
       b.range_to,
       GREATEST(c.reltuples, 0)::pg_catalog.int8 AS estimated_rows,
       pg_catalog.pg_total_relation_size(c.oid) AS total_bytes
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
  LEFT JOIN LATERAL dialpad.partition_bounds(c.oid) AS b ON true
 WHERE i.inhparent OPERATOR(pg_catalog.=) ANY (ARRAY['dialpad.webhook_events'::pg_catalog.regclass,
                                                    'dialpad.rejected_transitions'::pg_catalog.regclass]);
COMMENT ON VIEW dialpad.partitions IS
    'The partitions of dialpad.webhook_events and dialpad.rejected_transitions: their time range (NULL for the DEFAULT partition), estimated rows and size.';

-- The partition grid: multiples of the width from a Monday midnight UTC, so that days start
-- at midnight UTC and weeks on Mondays.
CREATE FUNCTION dialpad.partition_start(t timestamptz, width interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '2000-01-03 00:00:00+00'::timestamptz
           + width * floor(extract(epoch FROM t - '2000-01-03 00:00:00+00'::timestamptz)
                           / extract(epoch FROM width))
$$;
COMMENT ON FUNCTION dialpad.partition_start(timestamptz, interval) IS
    'The start of the partition of the given width that holds time t (multiples of the width from Monday 2000-01-03 00:00 UTC).';

-- Gives a new partition table the indexes of the DEFAULT partition def (named after the
-- table, with the DEFAULT partition's suffixes), its primary key as a constraint.
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

-- Retention and unfinished events. An expired partition of the inbox goes whole, whatever it
-- holds; its pending, retrying and dead-lettered events (few: a day's unreadable deliveries)
-- first move, unchanged (ids, payloads, audit columns), into the holding partition
-- dialpad.webhook_events_held, which covers everything before the oldest time partition.
-- The holding partition is rebuilt each time: a new table gets its own unfinished rows and
-- the expired partition's, the old one is dropped (what it held that has since been
-- processed or discarded goes with it, as a partition would), and the new one is attached
-- for the wider range. Its indexes are the DEFAULT partition's, so the claim and
-- dialpad.dead_events find held events as they find any other. Runs under run_maintenance's
-- ACCESS EXCLUSIVE lock on the inbox; detaches the expired partition (the caller drops it,
-- or keeps it detached) and returns how many of its events were held, NULL when there was
-- nothing to hold and no holding partition to extend.
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

-- Creates the partition of parent holding time t (the grid cell of t, shortened to the gap
-- between the existing partitions around t), moving into it the rows the DEFAULT partition
-- holds for its range. Built as a plain table and attached, so that ingestion (which only
-- needs the parent and the partition it writes to) never waits for it.
CREATE FUNCTION dialpad.add_partition(parent regclass, t timestamptz, width interval,
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

CREATE FUNCTION dialpad.run_maintenance()
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
