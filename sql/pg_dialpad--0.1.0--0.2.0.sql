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
-- The webhook source of each delivery (0.1.0 had one secret for all: NULL).
ALTER TABLE dialpad.webhook_events ADD COLUMN source text;
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

-- DROP EXTENSION while the workers run and sessions ingest (src/api/drop_guard.rs).
CREATE FUNCTION dialpad.before_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'dialpad_before_drop';
ALTER FUNCTION dialpad.before_drop() SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dialpad.before_drop() IS
    'Event trigger: before DROP EXTENSION pg_dialpad (or DROP SCHEMA dialpad), pauses the workers and locks the extension''s tables in the order every writer locks them, so the drop succeeds at once.';
CREATE EVENT TRIGGER dialpad_before_drop ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION dialpad.before_drop();

-- Terminal means terminal, and normal lifecycles are not anomalies (README, "Statuses").
ALTER TABLE dialpad.state_mapping ADD COLUMN keep_terminal boolean NOT NULL DEFAULT false;
COMMENT ON TABLE dialpad.state_mapping IS
    'Dialpad event state -> call status. status NULL: an enrichment event that changes no status. The status_if_unanswered_* columns replace status when the event has no date_connected; such a status is a default conclusion that a later event of the call mapping to another terminal status refines.';
COMMENT ON COLUMN dialpad.state_mapping.keep_terminal IS
    'When the call already has a terminal status, the event confirms it (no change, no rejected transition): true for hangup, which follows voicemail, missed and blocked.';
UPDATE dialpad.state_mapping SET keep_terminal = true WHERE state = 'hangup';
COMMENT ON TABLE dialpad.status_transitions IS
    'Allowed status changes. The same status is always allowed (idempotent retries); a row leaving a terminal status is refused (nothing leaves a terminal status).';
CREATE OR REPLACE FUNCTION dialpad.rule_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_RELID OPERATOR(pg_catalog.=) 'dialpad.call_statuses'::pg_catalog.regclass THEN
        UPDATE dialpad.call_statuses
           SET is_terminal = NEW.is_terminal, description = NEW.description
         WHERE status = NEW.status;
    ELSIF TG_RELID OPERATOR(pg_catalog.=) 'dialpad.state_mapping'::pg_catalog.regclass THEN
        UPDATE dialpad.state_mapping
           SET status = NEW.status,
               status_if_unanswered_inbound = NEW.status_if_unanswered_inbound,
               status_if_unanswered_outbound = NEW.status_if_unanswered_outbound,
               description = NEW.description,
               keep_terminal = NEW.keep_terminal
         WHERE state = NEW.state;
    ELSIF TG_RELID OPERATOR(pg_catalog.=) 'dialpad.status_transitions'::pg_catalog.regclass THEN
        PERFORM 1 FROM dialpad.status_transitions
          WHERE from_status = NEW.from_status AND to_status = NEW.to_status;
    ELSE
        -- A Citus shard of a rule table (dialpad.distribute()): the row is stored as sent.
        RETURN NEW;
    END IF;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

-- Rows 0.1.0 accepted that never took effect (moves out of a terminal status) are left as
-- they are; they are named here so a DBA can delete them.
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT t.from_status, t.to_status FROM dialpad.status_transitions t
               JOIN dialpad.call_statuses s ON s.status = t.from_status AND s.is_terminal LOOP
        RAISE WARNING 'dialpad.status_transitions row % -> % never takes effect (% is terminal); pg_dialpad 0.2.0 refuses such rows', r.from_status, r.to_status, r.from_status
            USING HINT = 'DELETE it, or make the status non-terminal.';
    END LOOP;
END
$$;

-- A rule row that could never take effect is refused rather than stored and ignored:
-- nothing leaves a terminal status, so neither may a transition row.
CREATE FUNCTION dialpad.check_rule() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_ARGV[0] = 'status_transitions' THEN
        IF EXISTS (SELECT 1 FROM dialpad.call_statuses WHERE status = NEW.from_status AND is_terminal) THEN
            RAISE EXCEPTION 'transition % -> % can never take effect: % is a terminal status', NEW.from_status, NEW.to_status, NEW.from_status
                USING ERRCODE = 'check_violation',
                      HINT = format('Nothing leaves a terminal status. To allow this move, make it non-terminal first: UPDATE dialpad.call_statuses SET is_terminal = false WHERE status = %L;', NEW.from_status);
        END IF;
    ELSIF NEW.is_terminal AND EXISTS (SELECT 1 FROM dialpad.status_transitions WHERE from_status = NEW.status) THEN
        RAISE EXCEPTION 'status % cannot be terminal: dialpad.status_transitions has moves out of it', NEW.status
            USING ERRCODE = 'check_violation',
                  HINT = format('Delete those moves first: DELETE FROM dialpad.status_transitions WHERE from_status = %L;', NEW.status);
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION dialpad.check_rule() IS
    'Trigger: refuses (23514) a status_transitions row out of a terminal status, and making a status terminal while moves out of it exist.';
CREATE TRIGGER status_transitions_check BEFORE INSERT OR UPDATE ON dialpad.status_transitions
    FOR EACH ROW EXECUTE FUNCTION dialpad.check_rule('status_transitions');
CREATE TRIGGER call_statuses_check BEFORE INSERT OR UPDATE OF is_terminal ON dialpad.call_statuses
    FOR EACH ROW EXECUTE FUNCTION dialpad.check_rule('call_statuses');

-- Deleted rules. pg_dump keeps the rule tables' rows, but a restore runs CREATE EXTENSION
-- first, which inserts the default rows again: a deleted default would come back. Every
-- deletion leaves its key here (dumped too); restoring a key deletes that rule again.
CREATE TABLE dialpad.deleted_rules (
    rule_table text NOT NULL CHECK (rule_table IN ('call_statuses', 'status_transitions', 'state_mapping')),
    rule_key   text[] NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (rule_table, rule_key)
);
COMMENT ON TABLE dialpad.deleted_rules IS
    'Keys of deleted rule rows, so that a pg_dump/restore deletes again the defaults CREATE EXTENSION re-inserts. Re-inserting a rule removes its key.';

CREATE FUNCTION dialpad.rule_key(rule_table text, rule jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE rule_table
        WHEN 'status_transitions' THEN ARRAY[rule ->> 'from_status', rule ->> 'to_status']
        WHEN 'call_statuses' THEN ARRAY[rule ->> 'status']
        ELSE ARRAY[rule ->> 'state'] END
$$;
COMMENT ON FUNCTION dialpad.rule_key(text, jsonb) IS
    'The key of a rule row (as jsonb) of the named rule table, as kept in dialpad.deleted_rules.';

CREATE FUNCTION dialpad.rule_deleted() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A Citus shard of a rule table (dialpad.distribute()): a cluster is not restored from
    -- pg_dump, and each node would record the deletion in its own table.
    IF TG_TABLE_NAME OPERATOR(pg_catalog.<>) TG_ARGV[0] THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO dialpad.deleted_rules (rule_table, rule_key)
        VALUES (TG_ARGV[0], dialpad.rule_key(TG_ARGV[0], to_jsonb(OLD)))
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM dialpad.deleted_rules
         WHERE rule_table = TG_ARGV[0] AND rule_key = dialpad.rule_key(TG_ARGV[0], to_jsonb(NEW));
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION dialpad.rule_deleted() IS
    'Trigger: records the key of a deleted rule row in dialpad.deleted_rules, and forgets it when the rule is inserted again.';
CREATE TRIGGER call_statuses_deleted AFTER INSERT OR DELETE ON dialpad.call_statuses
    FOR EACH ROW EXECUTE FUNCTION dialpad.rule_deleted('call_statuses');
CREATE TRIGGER status_transitions_deleted AFTER INSERT OR DELETE ON dialpad.status_transitions
    FOR EACH ROW EXECUTE FUNCTION dialpad.rule_deleted('status_transitions');
CREATE TRIGGER state_mapping_deleted AFTER INSERT OR DELETE ON dialpad.state_mapping
    FOR EACH ROW EXECUTE FUNCTION dialpad.rule_deleted('state_mapping');

CREATE FUNCTION dialpad.reapply_rule_deletion() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.rule_table = 'call_statuses' THEN
        DELETE FROM dialpad.call_statuses WHERE status = NEW.rule_key[1];
    ELSIF NEW.rule_table = 'status_transitions' THEN
        DELETE FROM dialpad.status_transitions WHERE from_status = NEW.rule_key[1] AND to_status = NEW.rule_key[2];
    ELSE
        DELETE FROM dialpad.state_mapping WHERE state = NEW.rule_key[1];
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION dialpad.reapply_rule_deletion() IS
    'Trigger on dialpad.deleted_rules: deletes the rule row a restored key names (pg_dump/restore keeps deletions of default rules).';
CREATE TRIGGER deleted_rules_apply AFTER INSERT ON dialpad.deleted_rules
    FOR EACH ROW EXECUTE FUNCTION dialpad.reapply_rule_deletion();

SELECT pg_catalog.pg_extension_config_dump('dialpad.deleted_rules', '');
GRANT SELECT ON dialpad.deleted_rules TO PUBLIC;
GRANT INSERT, DELETE ON dialpad.deleted_rules TO dialpad_admin;

-- The sanitized copy is bounded (max_bytes, 64 kB by default; long keys cut): two new
-- parameters, so the function is re-created with the new signature.
DROP FUNCTION dialpad.sanitize_call_payload(jsonb, integer, integer, integer, integer, integer, integer);
CREATE FUNCTION dialpad.sanitize_call_payload(
	"payload" jsonb,
	"max_transcript_length" INT DEFAULT 500,
	"max_string_length" INT DEFAULT 2000,
	"max_array_items" INT DEFAULT 10,
	"max_object_keys" INT DEFAULT 20,
	"sample_keys" INT DEFAULT 5,
	"max_depth" INT DEFAULT 5,
	"max_key_length" INT DEFAULT 256,
	"max_bytes" INT DEFAULT 65536
) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'sanitize_call_payload_wrapper';
ALTER FUNCTION dialpad.sanitize_call_payload(jsonb, integer, integer, integer, integer, integer, integer, integer, integer)
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dialpad.sanitize_call_payload(jsonb, integer, integer, integer, integer, integer, integer, integer, integer) IS
    'A size-bounded copy of a payload: transcripts cut at max_transcript_length characters, other strings at max_string_length, binary data removed, arrays cut to max_array_items plus a marker, nested objects over max_object_keys summarized, values deeper than max_depth replaced, keys longer than max_key_length cut; at most max_bytes of jsonb in all (as a last resort the top level keeps the pairs that fit and lists the rest). Idempotent.';

-- ---------------------------------------------------------------------------------------------
-- Retention (README, "Retention"): the inbox and rejected_transitions become partitioned by
-- time. Each 0.1.0 table is kept whole, payloads untouched, and attached as the first
-- partition (everything up to the end of today, UTC); later partitions are made by
-- dialpad.run_maintenance(). Nothing is copied or re-indexed: the cost is one scan (the
-- attach checks the range).
-- ---------------------------------------------------------------------------------------------

DO $$
DECLARE
    upto timestamptz;
    legacy text;
BEGIN
    SELECT GREATEST(date_trunc('day', now(), 'UTC'), date_trunc('day', max(received_at), 'UTC')) + interval '1 day'
      INTO upto FROM dialpad.webhook_events;
    legacy := 'webhook_events_before_' || to_char(upto AT TIME ZONE 'UTC', 'YYYYMMDD');
    ALTER SEQUENCE dialpad.webhook_events_id_seq OWNED BY NONE;
    ALTER TABLE dialpad.webhook_events ALTER COLUMN id DROP DEFAULT;
    DROP TRIGGER webhook_events_immutable ON dialpad.webhook_events;
    DROP TRIGGER webhook_events_before_insert ON dialpad.webhook_events;
    DROP TRIGGER webhook_events_wake ON dialpad.webhook_events;
    EXECUTE format('ALTER INDEX dialpad.webhook_events_pkey RENAME TO %I', legacy || '_pkey');
    -- The claim's index, keyed as every partition's (sql/schema.sql): it holds only the
    -- pending events, so building it reads the table once and writes a small index.
    DROP INDEX dialpad.webhook_events_pending;
    EXECUTE format('CREATE INDEX %I ON dialpad.webhook_events (id, received_at) WHERE processed_at IS NULL AND dead_at IS NULL',
                   legacy || '_pending');
    EXECUTE format('ALTER INDEX dialpad.webhook_events_dead RENAME TO %I', legacy || '_dead');
    EXECUTE format('ALTER INDEX dialpad.webhook_events_call_dedupe RENAME TO %I', legacy || '_call_dedupe');
    EXECUTE format('ALTER TABLE dialpad.webhook_events RENAME TO %I', legacy);
    EXECUTE format('ALTER EXTENSION pg_dialpad DROP TABLE dialpad.%I', legacy);
    PERFORM set_config('pg_dialpad_upgrade.legacy_events', legacy, true);
    PERFORM set_config('pg_dialpad_upgrade.legacy_upto', upto::text, true);

    SELECT GREATEST(date_trunc('day', now(), 'UTC'), date_trunc('day', max(rejected_at), 'UTC')) + interval '1 day'
      INTO upto FROM dialpad.rejected_transitions;
    legacy := 'rejected_transitions_before_' || to_char(upto AT TIME ZONE 'UTC', 'YYYYMMDD');
    ALTER SEQUENCE dialpad.rejected_transitions_id_seq OWNED BY NONE;
    ALTER TABLE dialpad.rejected_transitions ALTER COLUMN id DROP DEFAULT;
    EXECUTE format('ALTER INDEX dialpad.rejected_transitions_pkey RENAME TO %I', legacy || '_pkey');
    EXECUTE format('ALTER INDEX dialpad.rejected_transitions_call RENAME TO %I', legacy || '_call');
    EXECUTE format('ALTER TABLE dialpad.rejected_transitions RENAME TO %I', legacy);
    EXECUTE format('ALTER EXTENSION pg_dialpad DROP TABLE dialpad.%I', legacy);
    PERFORM set_config('pg_dialpad_upgrade.legacy_rejections', legacy, true);
    PERFORM set_config('pg_dialpad_upgrade.legacy_rejections_upto', upto::text, true);
END
$$;

CREATE TABLE dialpad.webhook_events (
    id              bigint NOT NULL DEFAULT nextval('dialpad.webhook_events_id_seq'::regclass),
    event_type      text,
    call_id         bigint,
    dedupe_key      text,
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    processed_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0
                    CONSTRAINT webhook_events_attempts_check CHECK (attempts OPERATOR(pg_catalog.>=) 0),
    last_error      text,
    next_attempt_at timestamptz,
    dead_at         timestamptz,
    duplicate_of    bigint,
    source          text
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE dialpad.webhook_events_id_seq OWNED BY dialpad.webhook_events.id;
COMMENT ON TABLE dialpad.webhook_events IS
    'Inbox and immutable audit log of Dialpad webhook deliveries, partitioned by received_at (see dialpad.run_maintenance()). Pending: processed_at and dead_at NULL; due when next_attempt_at is NULL or past.';
COMMENT ON COLUMN dialpad.webhook_events.received_at IS 'When the delivery was stored; the partition key (dialpad.partition_interval wide partitions, dropped after dialpad.retention).';
COMMENT ON COLUMN dialpad.webhook_events.event_type IS 'Set from payload->>''state'' on insert when not given.';
COMMENT ON COLUMN dialpad.webhook_events.dedupe_key IS 'call_id/state/event_timestamp (numbers in one canonical spelling), set on insert when all three are in the payload: deliveries with the same key are one event (Dialpad redelivers).';
COMMENT ON COLUMN dialpad.webhook_events.duplicate_of IS 'Set on a redelivery: the id of the first delivery of the same event. Kept in the audit log, never applied.';
COMMENT ON COLUMN dialpad.webhook_events.source IS 'The webhook source the delivery came through (set by dialpad.ingest_webhook from the verified source; NULL for plain inserts).';
COMMENT ON COLUMN dialpad.webhook_events.call_id IS 'Set from payload->''call_id'' on insert (NULL when it is not an integer).';
COMMENT ON COLUMN dialpad.webhook_events.payload IS 'The full event as delivered. Cannot be changed after insert.';
COMMENT ON COLUMN dialpad.webhook_events.processed_at IS 'When the event was applied to dialpad.calls; NULL while pending.';
COMMENT ON COLUMN dialpad.webhook_events.attempts IS 'How many times applying the event failed.';
COMMENT ON COLUMN dialpad.webhook_events.last_error IS 'The error of the last failed attempt.';
COMMENT ON COLUMN dialpad.webhook_events.next_attempt_at IS 'Earliest time of the next attempt after a failure (exponential backoff).';
COMMENT ON COLUMN dialpad.webhook_events.dead_at IS 'Set when the event was dead-lettered: it will not be tried again unless re-driven.';
CREATE TABLE dialpad.webhook_events_default PARTITION OF dialpad.webhook_events DEFAULT;
COMMENT ON TABLE dialpad.webhook_events_default IS
    'Events whose received_at no partition covers yet; dialpad.run_maintenance() moves them into their own partition. Its storage parameters are copied to every partition created.';
-- Indexes are per partition (see sql/schema.sql): the DEFAULT partition's are the model.
ALTER TABLE dialpad.webhook_events_default ADD CONSTRAINT webhook_events_default_pkey PRIMARY KEY (id);
CREATE INDEX webhook_events_default_pending ON dialpad.webhook_events_default (id, received_at)
    WHERE processed_at IS NULL AND dead_at IS NULL;
CREATE INDEX webhook_events_default_dead ON dialpad.webhook_events_default (dead_at)
    WHERE dead_at IS NOT NULL;
CREATE INDEX webhook_events_default_call_dedupe ON dialpad.webhook_events_default (call_id, dedupe_key, received_at);
CREATE OR REPLACE FUNCTION dialpad.webhook_events_immutable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.payload IS DISTINCT FROM OLD.payload
       OR NEW.received_at IS DISTINCT FROM OLD.received_at
       OR NEW.id IS DISTINCT FROM OLD.id
       OR NEW.call_id IS DISTINCT FROM OLD.call_id
       OR NEW.dedupe_key IS DISTINCT FROM OLD.dedupe_key
       OR NEW.source IS DISTINCT FROM OLD.source THEN
        RAISE EXCEPTION 'webhook event % is part of the audit log: its id, payload, call_id, source and received_at cannot be changed', OLD.id
            USING ERRCODE = 'restrict_violation',
                  HINT = 'Insert a new event instead; processing columns (processed_at, attempts, ...) may be updated.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION dialpad.webhook_events_immutable() IS
    'Trigger: refuses any change of a stored event''s id, payload, call_id, dedupe_key, source or received_at.';
CREATE TRIGGER webhook_events_immutable BEFORE UPDATE OF id, payload, call_id, dedupe_key, received_at, source ON dialpad.webhook_events
    FOR EACH ROW EXECUTE FUNCTION dialpad.webhook_events_immutable();
ALTER TABLE dialpad.webhook_events ENABLE ALWAYS TRIGGER webhook_events_immutable;
CREATE TRIGGER webhook_events_wake AFTER INSERT ON dialpad.webhook_events
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.wake_workers_on_insert();
CREATE TRIGGER webhook_events_before_insert BEFORE INSERT ON dialpad.webhook_events
    FOR EACH ROW EXECUTE FUNCTION dialpad.webhook_events_before_insert();
ALTER TABLE dialpad.webhook_events ENABLE ALWAYS TRIGGER webhook_events_before_insert;

CREATE TABLE dialpad.rejected_transitions (
    id              bigint NOT NULL DEFAULT nextval('dialpad.rejected_transitions_id_seq'::regclass),
    dialpad_call_id bigint,
    event_id        bigint,
    from_status     text,
    to_status       text,
    reason          text,
    rejected_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
) PARTITION BY RANGE (rejected_at);
ALTER SEQUENCE dialpad.rejected_transitions_id_seq OWNED BY dialpad.rejected_transitions.id;
COMMENT ON TABLE dialpad.rejected_transitions IS
    'Every invalid status transition attempted on dialpad.calls while dialpad.invalid_transition = skip, and every event whose status the processor refused (event_id set). Partitioned by rejected_at and kept as long as the inbox (dialpad.retention).';
CREATE TABLE dialpad.rejected_transitions_default PARTITION OF dialpad.rejected_transitions DEFAULT;
COMMENT ON TABLE dialpad.rejected_transitions_default IS
    'Rejections whose rejected_at no partition covers yet; dialpad.run_maintenance() moves them into their own partition.';
ALTER TABLE dialpad.rejected_transitions_default ADD CONSTRAINT rejected_transitions_default_pkey PRIMARY KEY (id);
CREATE INDEX rejected_transitions_default_call ON dialpad.rejected_transitions_default (dialpad_call_id);

DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_settings
                    WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE dialpad.webhook_events ALTER COLUMN payload SET COMPRESSION lz4;
    END IF;
END
$$;
ALTER TABLE dialpad.webhook_events_default SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- The 0.1.0 tables become the first partitions, with their indexes.
DO $$
BEGIN
    EXECUTE format('ALTER TABLE dialpad.webhook_events ATTACH PARTITION dialpad.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                   current_setting('pg_dialpad_upgrade.legacy_events'), current_setting('pg_dialpad_upgrade.legacy_upto'));
    EXECUTE format('ALTER TABLE dialpad.rejected_transitions ATTACH PARTITION dialpad.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                   current_setting('pg_dialpad_upgrade.legacy_rejections'), current_setting('pg_dialpad_upgrade.legacy_rejections_upto'));
END
$$;

-- Time partitions and retention of the inbox and of rejected_transitions (README,
-- "Retention"). Expired data goes by dropping (or detaching) whole partitions, never by a
-- DELETE; rows no partition covers wait in the DEFAULT partition, never refused.

CREATE VIEW dialpad.partitions AS
SELECT i.inhparent::pg_catalog.regclass AS parent,
       c.oid::pg_catalog.regclass AS partition,
       b.bounds IS NULL AS is_default,
       CASE b.bounds[1] WHEN 'MINVALUE' THEN '-infinity' ELSE b.bounds[1] END::pg_catalog.timestamptz AS range_from,
       CASE b.bounds[2] WHEN 'MAXVALUE' THEN 'infinity' ELSE b.bounds[2] END::pg_catalog.timestamptz AS range_to,
       GREATEST(c.reltuples, 0)::pg_catalog.int8 AS estimated_rows,
       pg_catalog.pg_total_relation_size(c.oid) AS total_bytes
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
  LEFT JOIN LATERAL pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
       'FROM \(''?([^'')]+)''?\) TO \(''?([^'')]+)''?\)') AS b(bounds) ON true
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
    def_name text;
    opts text[];
    idx record;
    idx_name text;
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
    def_name := (SELECT relname FROM pg_class WHERE oid = def);

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
    FOR idx IN SELECT i.indexrelid, i.indisprimary, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = def ORDER BY c.relname LOOP
        idx_name := partition || substr(idx.relname, length(def_name) + 1);
        EXECUTE regexp_replace(pg_get_indexdef(idx.indexrelid), '^(CREATE (UNIQUE )?INDEX )\S+ ON \S+ ',
                               format('\1%I ON dialpad.%I ', idx_name, partition));
        IF idx.indisprimary THEN
            EXECUTE format('ALTER TABLE dialpad.%I ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I', partition, idx_name, idx_name);
        END IF;
    END LOOP;
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
    pending bigint;
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
                  WHERE q.parent = tbl AND NOT q.is_default AND q.range_to <= now() - keep
                  ORDER BY q.range_from
        LOOP
            action := NULL; partition := p.partition::text; range_from := p.range_from; range_to := p.range_to;
            BEGIN
                -- The parent first, as every writer locks it: no deadlock with them.
                EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', tbl);
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.partition);
                pending := 0;
                IF tbl = 'dialpad.webhook_events'::regclass THEN
                    -- A pending, retrying or dead-lettered event keeps its whole partition
                    -- (counted on the two partial indexes, not by reading the partition).
                    EXECUTE format('SELECT (SELECT count(*) FROM %1$s WHERE processed_at IS NULL AND dead_at IS NULL)
                                         + (SELECT count(*) FROM %1$s WHERE dead_at IS NOT NULL AND processed_at IS NULL)',
                                   p.partition) INTO pending;
                END IF;
                IF pending > 0 THEN
                    action := 'kept'; rows := pending;
                ELSIF mode = 'detach' THEN
                    EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', tbl, p.partition);
                    action := 'detached'; rows := p.estimated_rows;
                ELSE
                    EXECUTE format('DROP TABLE %s', p.partition);
                    action := 'dropped'; rows := p.estimated_rows;
                END IF;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                action := 'busy'; rows := NULL;
            END;
            RETURN NEXT;
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
    'Creates the partitions of dialpad.webhook_events and dialpad.rejected_transitions for the next dialpad.partitions_ahead intervals, moves rows out of the DEFAULT partitions into partitions of their own, and drops (or detaches, per dialpad.retention_mode) partitions older than dialpad.retention, except those holding a pending or dead-lettered event. Returns what it did: created, dropped, detached, kept (rows = its unprocessed events), busy (a lock was not had within 2 s; tried again next time), backfilled (rows = calls whose leg columns were filled from the audit log after an upgrade, 5,000 per run). The workers run it every dialpad.maintenance_interval, and again at once while it backfills.';

SELECT pg_catalog.pg_extension_config_dump('dialpad.webhook_events_default', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rejected_transitions_default', '');

-- The views name the new tables.
CREATE OR REPLACE VIEW dialpad.dead_events AS
SELECT id, event_type,
       CASE WHEN pg_catalog.jsonb_typeof(payload) OPERATOR(pg_catalog.=) 'object'
            THEN payload OPERATOR(pg_catalog.->>) 'call_id' END AS call_id,
       attempts, last_error, received_at, dead_at, payload
  FROM dialpad.webhook_events
 WHERE dead_at IS NOT NULL;
CREATE OR REPLACE VIEW dialpad.queue_stats AS
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
CREATE OR REPLACE VIEW dialpad.payload_stats AS
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

GRANT INSERT (event_type, payload) ON dialpad.webhook_events TO dialpad_ingest;
GRANT SELECT (id, call_id, dedupe_key, duplicate_of, received_at) ON dialpad.webhook_events TO dialpad_ingest;
GRANT SELECT ON dialpad.rejected_transitions, dialpad.partitions TO dialpad_reader;
GRANT SELECT (id, processed_at, dead_at, next_attempt_at, attempts),
      UPDATE (dead_at, attempts, next_attempt_at) ON dialpad.webhook_events TO dialpad_admin;
GRANT SELECT, UPDATE (processed_at, attempts, last_error, next_attempt_at, dead_at, duplicate_of)
    ON dialpad.webhook_events TO dialpad_worker;
GRANT INSERT ON dialpad.rejected_transitions TO dialpad_worker;
REVOKE EXECUTE ON FUNCTION dialpad.run_maintenance(), dialpad.add_partition(regclass, timestamptz, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.run_maintenance() TO dialpad_admin, dialpad_worker;

-- Each call counts the events applied to it, so that once retention has dropped part of a
-- call's history a late event is not re-derived from what is left (README, "Retention").
-- 0.1.0 never dropped anything: the inbox holds every applied event of every call.
ALTER TABLE dialpad.calls ADD COLUMN events_applied integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN dialpad.calls.events_applied IS 'How many events (redeliveries not counted) were applied to this row. When the inbox holds fewer (retention dropped older partitions), a late event is applied to the row as it stands rather than re-deriving the call from what is left.';
UPDATE dialpad.calls AS c SET events_applied = e.n
  FROM (SELECT call_id, count(*)::integer AS n FROM dialpad.webhook_events
         WHERE processed_at IS NOT NULL AND duplicate_of IS NULL AND call_id IS NOT NULL
         GROUP BY call_id) AS e
 WHERE c.dialpad_call_id = e.call_id;

-- ---------------------------------------------------------------------------------------------
-- Webhook sources (README, "Webhook sources"): secrets per Dialpad subscription, rotation,
-- and the source of every delivery and call. The setting dialpad.webhook_secret is retired:
-- a placeholder setting is readable by every role when the library is not preloaded.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE dialpad.calls ADD COLUMN source text;
COMMENT ON COLUMN dialpad.calls.source IS 'The webhook source of the call''s first event (see dialpad.sources): the column for row-level security per company.';
CREATE TABLE dialpad.sources (
    name                 text PRIMARY KEY,
    secret               bytea NOT NULL,
    previous_secret      bytea,
    previous_valid_until timestamptz,
    enabled              boolean NOT NULL DEFAULT true,
    labels               jsonb NOT NULL DEFAULT '{}'::jsonb
                         CHECK (pg_catalog.jsonb_typeof(labels) OPERATOR(pg_catalog.=) 'object'),
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rotated_at           timestamptz,
    CONSTRAINT sources_previous_check CHECK ((previous_secret IS NULL) OPERATOR(pg_catalog.=) (previous_valid_until IS NULL))
);
COMMENT ON TABLE dialpad.sources IS
    'Webhook sources (Dialpad subscriptions): name, secret, the previous secret while a rotation overlaps, enabled, labels. Managed with dialpad.add_source(), rotate_secret(), disable_source(), enable_source(), drop_source(); readable only by the extension''s owner.';
COMMENT ON COLUMN dialpad.sources.secret IS 'The HS256 secret, concealed (XOR with a keystream derived from the name: not in plain sight in the table, a dump or the data files; not encryption).';
COMMENT ON COLUMN dialpad.sources.previous_valid_until IS 'Until when previous_secret still verifies (set by dialpad.rotate_secret()).';
COMMENT ON COLUMN dialpad.sources.labels IS 'Free-form labels (company, office, ...), e.g. for row-level security policies.';
REVOKE ALL ON dialpad.sources FROM PUBLIC;

CREATE VIEW dialpad.source_list AS
SELECT name, enabled, labels, created_at, rotated_at,
       CASE WHEN previous_valid_until OPERATOR(pg_catalog.>) pg_catalog.now() THEN previous_valid_until END
           AS previous_secret_valid_until
  FROM dialpad.sources;
COMMENT ON VIEW dialpad.source_list IS
    'The webhook sources without their secrets: name, enabled, labels, when added and rotated, and until when the previous secret still verifies.';

CREATE TRIGGER sources_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dialpad.sources
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.rules_changed();
SELECT pg_catalog.pg_extension_config_dump('dialpad.sources', '');
GRANT SELECT ON dialpad.source_list TO dialpad_reader;

-- ingest_webhook(body) becomes ingest_webhook(body, source DEFAULT NULL): calls with one
-- argument keep working. Roles granted EXECUTE on the old function keep it on the new one.
DO $$
DECLARE grantees text[];
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT a.grantee::regrole::text)
      INTO grantees
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'dialpad.ingest_webhook(text)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE' AND a.grantee OPERATOR(pg_catalog.<>) 0
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
    PERFORM pg_catalog.set_config('pg_dialpad_upgrade.ingest_grantees', coalesce(pg_catalog.array_to_string(grantees, ','), ''), true);
END
$$;
DROP FUNCTION dialpad.ingest_webhook(text);
CREATE FUNCTION dialpad.ingest_webhook("body" text, "source" text DEFAULT NULL) RETURNS bigint
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'ingest_webhook_with_source_wrapper';
CREATE FUNCTION dialpad.add_source("name" text, "secret" text, "labels" jsonb DEFAULT '{}') RETURNS void
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'add_source_wrapper';
CREATE FUNCTION dialpad.rotate_secret("name" text, "new_secret" text, "overlap" interval DEFAULT '24 hours') RETURNS void
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'rotate_secret_wrapper';
CREATE FUNCTION dialpad.disable_source("name" text) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'disable_source_wrapper';
CREATE FUNCTION dialpad.enable_source("name" text) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'enable_source_wrapper';
CREATE FUNCTION dialpad.drop_source("name" text) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'drop_source_wrapper';
ALTER FUNCTION dialpad.ingest_webhook(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialpad.add_source(text, text, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialpad.rotate_secret(text, text, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialpad.disable_source(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialpad.enable_source(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialpad.drop_source(text) SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dialpad.ingest_webhook(text, text) IS
    'Stores one webhook delivery and returns the id of its first delivery; a redelivery of the same call_id/state/event_timestamp is kept marked duplicate_of that id and never applied again. source names the webhook source (dialpad.sources) whose secrets verify the HS256 JWT body; NULL means the only source, or plain JSON when there is none. Errors: 22P02 malformed JSON or token, 28000 refused (DETAIL: bad signature, expired, not yet valid, unsupported crit, unsupported algorithm, unknown source, disabled source, unsigned body), 22023 stale event or several sources and none named, 54000 body over dialpad.max_body_size.';
COMMENT ON FUNCTION dialpad.add_source(text, text, jsonb) IS
    'Adds a webhook source: deliveries through it must be HS256 JWTs signed with secret. Call it with bind parameters so that the secret is not in the statement text. Errors: 42710 exists, 22023 bad name, empty secret or labels not an object.';
COMMENT ON FUNCTION dialpad.rotate_secret(text, text, interval) IS
    'Gives a webhook source a new secret; the old one keeps verifying until now() + overlap (default 24 hours), then stops. Errors: 42704 no such source, 22023 empty secret or negative overlap.';
COMMENT ON FUNCTION dialpad.disable_source(text) IS 'Refuses deliveries through a webhook source (28000) until dialpad.enable_source().';
COMMENT ON FUNCTION dialpad.enable_source(text) IS 'Accepts deliveries through a disabled webhook source again.';
COMMENT ON FUNCTION dialpad.drop_source(text) IS 'Removes a webhook source; events and calls keep its name.';
REVOKE EXECUTE ON FUNCTION dialpad.ingest_webhook(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialpad.ingest_webhook(text, text) TO dialpad_ingest;
REVOKE EXECUTE ON FUNCTION dialpad.add_source(text, text, jsonb), dialpad.rotate_secret(text, text, interval),
    dialpad.disable_source(text), dialpad.enable_source(text), dialpad.drop_source(text) FROM PUBLIC;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY pg_catalog.string_to_array(pg_catalog.current_setting('pg_dialpad_upgrade.ingest_grantees'), ',') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION dialpad.ingest_webhook(text, text) TO %s', r);
    END LOOP;
END
$$;

-- 0.1.0's one secret (the setting dialpad.webhook_secret) becomes the webhook source
-- "default": deliveries signed with it keep being accepted, naming no source.
DO $$
DECLARE legacy text := pg_catalog.current_setting('dialpad.webhook_secret', true);
BEGIN
    IF legacy IS NOT NULL AND legacy OPERATOR(pg_catalog.<>) '' THEN
        PERFORM dialpad.add_source('default', legacy);
        RAISE WARNING 'pg_dialpad: the secret of dialpad.webhook_secret is now the webhook source "default"'
            USING HINT = 'Remove the setting, which any role can read while the library is not loaded: ALTER SYSTEM RESET dialpad.webhook_secret (and ALTER DATABASE/ROLE ... RESET dialpad.webhook_secret where it was set there), then SELECT pg_reload_conf().';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Analysts (README, "Calls as the caller lived them"): sql/analytics.sql, verbatim below,
-- then the new leg columns of the calls 0.1.0 made, filled from the audit log, and
-- dialpad.logical_calls built from them. The legs' own index replaces the one on
-- master_call_id (logical_call_id is master_call_id where that is set).
-- ---------------------------------------------------------------------------------------------
DROP INDEX dialpad.calls_master_call_id;
-- The row trigger also sees deletes now (it notes each leg's logical call), and a statement
-- trigger refreshes dialpad.logical_calls after every write of the legs.
DROP TRIGGER calls_before_write ON dialpad.calls;
CREATE TRIGGER calls_before_write BEFORE INSERT OR UPDATE OR DELETE ON dialpad.calls
    FOR EACH ROW EXECUTE FUNCTION dialpad.calls_before_write();
CREATE FUNCTION dialpad.calls_after_write() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'calls_after_write_wrapper';
CREATE TRIGGER calls_after_write AFTER INSERT OR UPDATE OR DELETE ON dialpad.calls
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_after_write();
ALTER TABLE dialpad.calls ENABLE ALWAYS TRIGGER calls_before_write, ENABLE ALWAYS TRIGGER calls_after_write;
ALTER FUNCTION dialpad.calls_after_write() SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dialpad.calls_before_write() IS
    'Trigger on dialpad.calls: stores the direction normalized and enforces dialpad.status_transitions (see dialpad.invalid_transition); notes the logical call of each leg written or deleted.';
COMMENT ON FUNCTION dialpad.calls_after_write() IS
    'Trigger on dialpad.calls: brings the dialpad.logical_calls rows of the legs a statement wrote up to date (once per statement).';

-- pg_dialpad for analysts (README, "Calls as the caller lived them"): the leg columns of
-- dialpad.calls, and dialpad.logical_calls, one row per real call, kept by triggers on
-- dialpad.calls in the transaction that writes the legs. This file is part of both a fresh
-- install and the 0.1.0 -> 0.2.0 upgrade script (copied there verbatim).

-- ---------------------------------------------------------------------------------------------
-- Leg columns. The processor fills them as it fills the others: a newer event overwrites a
-- value it carries, an older one only fills what is empty, an event without it erases nothing.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE dialpad.calls
    ADD COLUMN talk_seconds numeric(14, 3),
    ADD COLUMN hold_seconds numeric(14, 3),
    ADD COLUMN total_duration_seconds numeric(14, 3),
    ADD COLUMN rang_at timestamptz,
    ADD COLUMN queued_at timestamptz,
    ADD COLUMN is_transferred boolean,
    ADD COLUMN group_id text,
    ADD COLUMN labels jsonb,
    ADD COLUMN csat_score numeric,
    ADD COLUMN recordings jsonb,
    ADD COLUMN voicemail_recording_url text,
    ADD COLUMN end_state text,
    ADD COLUMN logical_call_id bigint
        GENERATED ALWAYS AS (COALESCE(master_call_id, entry_point_call_id, dialpad_call_id)) STORED;
COMMENT ON COLUMN dialpad.calls.talk_seconds IS 'talk_time in seconds (Dialpad sends milliseconds): 0 for a leg that only reached an IVR or a queue.';
COMMENT ON COLUMN dialpad.calls.hold_seconds IS 'hold_time in seconds.';
COMMENT ON COLUMN dialpad.calls.total_duration_seconds IS 'total_duration in seconds (ring time included).';
COMMENT ON COLUMN dialpad.calls.rang_at IS 'date_rang (date_first_rang when only that is sent); NULL if the leg never rang.';
COMMENT ON COLUMN dialpad.calls.queued_at IS 'date_queued.';
COMMENT ON COLUMN dialpad.calls.is_transferred IS 'is_transferred.';
COMMENT ON COLUMN dialpad.calls.group_id IS 'group_id (the department, office or call center of the leg).';
COMMENT ON COLUMN dialpad.calls.labels IS 'labels, a JSON array of strings (the newest event''s list).';
COMMENT ON COLUMN dialpad.calls.csat_score IS 'csat_score when it is a number; other values stay in the audit log only.';
COMMENT ON COLUMN dialpad.calls.recordings IS 'Every recording any event of the leg carried, once each, in the order they started: [{id, url, type, start_time, duration_seconds}] (type: callrecording, admincallrecording, voicemail).';
COMMENT ON COLUMN dialpad.calls.recording_url IS 'The call recording: the first callrecording (or untyped item) of recordings, else the first admincallrecording. Never a voicemail.';
COMMENT ON COLUMN dialpad.calls.voicemail_recording_url IS 'The voicemail''s audio: the first recording of type voicemail.';
COMMENT ON COLUMN dialpad.calls.end_state IS 'The Dialpad state of the event that gave the leg its terminal status (hangup, missed, voicemail, blocked, ...).';
COMMENT ON COLUMN dialpad.calls.logical_call_id IS 'The real call this leg belongs to: master_call_id, else entry_point_call_id, else the leg''s own id (generated). dialpad.logical_calls has one row per value.';

-- Finds the legs of a logical call (the triggers below read them on every write).
CREATE INDEX calls_logical_call_id ON dialpad.calls (logical_call_id);

-- ---------------------------------------------------------------------------------------------
-- One row per real call.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.logical_calls (
    logical_call_id       bigint PRIMARY KEY,
    direction             text,
    outcome               text NOT NULL CHECK (outcome IN ('answered', 'missed', 'abandoned', 'voicemail', 'no_answer', 'blocked', 'in_progress')),
    started_at            timestamptz NOT NULL,
    answered_at           timestamptz,
    ended_at              timestamptz,
    wait_seconds          numeric(14, 3),
    talk_seconds          numeric(14, 3),
    hold_seconds          numeric(14, 3),
    legs                  integer NOT NULL,
    transfers             integer NOT NULL,
    answered_by_target_id text,
    answered_by_name      text,
    external_number       text,
    internal_number       text,
    contact_id            text,
    contact_name          text,
    recording_url         text,
    voicemail_link        text,
    source                text,
    last_event_at         timestamptz
);
COMMENT ON TABLE dialpad.logical_calls IS
    'One row per real call (the legs of dialpad.calls grouped by logical_call_id), as the caller lived it. Kept by triggers on dialpad.calls in the writing transaction from the view dialpad.logical_calls_from_legs; rebuilt whole by dialpad.rebuild_logical_calls().';
COMMENT ON COLUMN dialpad.logical_calls.outcome IS
    'in_progress: a leg has not reached a terminal status. answered: a leg connected with talk time (not a voicemail leg). blocked: a leg ended by a blocked event. voicemail: a leg reached voicemail. no_answer: outbound, nobody answered. abandoned: inbound, the caller hung up before any leg rang (IVR, queue). missed: inbound, a leg rang and nobody answered. First match wins, in this order; an unanswered operator or agent leg inside an answered call does not make it missed.';
COMMENT ON COLUMN dialpad.logical_calls.started_at IS 'The earliest start of any leg (date_started, else the first time the leg knows).';
COMMENT ON COLUMN dialpad.logical_calls.answered_at IS 'When the caller was answered: the first answering leg''s date_connected (an agent''s, not that of the department or call-center leg that carried the caller to the agents).';
COMMENT ON COLUMN dialpad.logical_calls.ended_at IS 'The latest date_ended of the legs; NULL while in progress.';
COMMENT ON COLUMN dialpad.logical_calls.wait_seconds IS 'From started_at to answered_at; NULL if not answered.';
COMMENT ON COLUMN dialpad.logical_calls.talk_seconds IS 'The conversation: the talk time of the answering legs, each moment once: without a root leg that carried the caller to the agents (department, office, call center), and without legs that joined a person''s root leg and ended within it (conference); the legs of a transfer add up.';
COMMENT ON COLUMN dialpad.logical_calls.hold_seconds IS 'Hold time of the same legs as talk_seconds.';
COMMENT ON COLUMN dialpad.logical_calls.legs IS 'How many legs (rows of dialpad.calls) the call has.';
COMMENT ON COLUMN dialpad.logical_calls.transfers IS 'How many of its legs are marked is_transferred.';
COMMENT ON COLUMN dialpad.logical_calls.answered_by_target_id IS 'target.id of the leg that answered (see answered_at).';

CREATE INDEX logical_calls_started_at ON dialpad.logical_calls (started_at);
ALTER TABLE dialpad.logical_calls SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02);

-- Every call computed from its legs, live: the whole definition of dialpad.logical_calls,
-- readable by a DBA. A view, not a function: its query is parsed once (operators bound at
-- creation, whatever a caller's search_path), and a condition on logical_call_id reaches the
-- index on the legs, so the triggers below compute only the calls a statement touched.
CREATE VIEW dialpad.logical_calls_from_legs AS
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
           count(*) FILTER (WHERE is_transferred) AS transfers,
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
COMMENT ON VIEW dialpad.logical_calls_from_legs IS
    'Every call computed live from its legs in dialpad.calls: the definition of each column of dialpad.logical_calls and of outcome (which the triggers on dialpad.calls copy there).';

-- Every row again from the legs: after an edit of dialpad.call_statuses that changes which
-- statuses are terminal, or to repair. Writers of dialpad.calls wait meanwhile.
CREATE FUNCTION dialpad.rebuild_logical_calls() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE dialpad.calls IN SHARE MODE;
    DELETE FROM dialpad.logical_calls;
    INSERT INTO dialpad.logical_calls SELECT * FROM dialpad.logical_calls_from_legs;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.rebuild_logical_calls() IS
    'Recomputes every row of dialpad.logical_calls from dialpad.calls (blocking writers of calls meanwhile); returns the number of rows.';

-- The rows follow every write of the legs: the row trigger calls_before_write notes the
-- logical call of each leg written, the statement trigger calls_after_write (sql/triggers.sql)
-- refreshes those calls once per statement, computed as the view above defines them
-- (src/domain/logical.rs), serialized per call against concurrent writers of its legs
-- (src/pipeline/logical.rs). A TRUNCATE of the legs empties the table.
CREATE FUNCTION dialpad.calls_truncated() RETURNS trigger
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
      FROM pg_dist_shard c
      JOIN pg_dist_shard l ON l.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
                          AND l.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.logical_calls'::regclass
      JOIN pg_dist_shard st ON st.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
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
COMMENT ON FUNCTION dialpad.calls_truncated() IS
    'Trigger on dialpad.calls: TRUNCATE of the legs empties dialpad.logical_calls (on Citus, each shard its colocated shards).';
CREATE TRIGGER calls_truncated AFTER TRUNCATE ON dialpad.calls
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_truncated();
ALTER TABLE dialpad.calls ENABLE ALWAYS TRIGGER calls_truncated;

REVOKE EXECUTE ON FUNCTION dialpad.rebuild_logical_calls() FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Leg columns of calls made before they existed (an upgrade from 0.1.0 lists its calls in
-- dialpad.leg_backfill): filled from the audit log after the upgrade, a slice at a time, by
-- dialpad.run_maintenance() (the workers run it; pg_cron users schedule it), so that the
-- upgrade itself stays short: ingestion waits for ALTER EXTENSION to commit.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.leg_backfill (
    dialpad_call_id bigint PRIMARY KEY
);
COMMENT ON TABLE dialpad.leg_backfill IS
    'Calls whose leg columns an upgrade left to be filled from the audit log; dialpad.backfill_legs() (called by dialpad.run_maintenance()) empties it.';
SELECT pg_catalog.pg_extension_config_dump('dialpad.leg_backfill', '');

-- Fills the leg columns of up to max_calls listed calls from their events in the audit log:
-- each column takes the value of the newest event (by event_timestamp) that carries it, as
-- the processor does; a value the processor would refuse is left NULL. recording_url is chosen
-- again from every recording of the leg (0.1.0 took the first url, a voicemail's too). Calls a
-- processor holds are left for the next call. Every listed call is written, so that the
-- triggers bring its dialpad.logical_calls row up to date. Returns how many calls were filled.
CREATE FUNCTION dialpad.backfill_legs(max_calls integer DEFAULT 5000) RETURNS bigint
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
                         'date_queued', 'is_transferred', 'group_id', 'labels', 'csat_score')
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
COMMENT ON FUNCTION dialpad.backfill_legs(integer) IS
    'Fills the leg columns of up to max_calls calls listed in dialpad.leg_backfill from the audit log (dialpad.run_maintenance() calls it); returns how many.';
REVOKE EXECUTE ON FUNCTION dialpad.backfill_legs(integer) FROM PUBLIC;

-- The leg columns of the calls 0.1.0 made, and their dialpad.logical_calls rows, are filled
-- from the audit log after the upgrade, by dialpad.run_maintenance() (dialpad.backfill_legs()),
-- a slice at a time, while ingestion and processing go on: listed here.
INSERT INTO dialpad.leg_backfill SELECT dialpad_call_id FROM dialpad.calls;

GRANT SELECT ON dialpad.logical_calls, dialpad.logical_calls_from_legs TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.rebuild_logical_calls() TO dialpad_admin;

-- dialpad.worker_stats gains the node (sql/citus.sql makes it again).
DROP VIEW dialpad.worker_stats;

-- ---------------------------------------------------------------------------------------------
-- Scaling out with Citus (README, "Scaling out with Citus"): sql/citus.sql, verbatim below,
-- after the function the planner hook routes INSERTs into the distributed inbox with.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION dialpad.routing_call_id("payload" jsonb) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'routing_call_id_wrapper';
ALTER FUNCTION dialpad.routing_call_id(jsonb) SET search_path = pg_catalog, pg_temp;

-- pg_dialpad on Citus (README, "Scaling out with Citus"). This file is part of both a fresh
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
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    IF (SELECT groupid FROM pg_dist_local_group) OPERATOR(pg_catalog.<>) 0
       OR NOT EXISTS (SELECT FROM pg_dist_partition p
                       WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.calls'::regclass) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT w.nodename || ':' || w.nodeport, w.success, w.result
                   FROM run_command_on_workers(command) w ORDER BY 1;
END
$$;
COMMENT ON FUNCTION dialpad.on_worker_nodes(text) IS
    'On a Citus coordinator after dialpad.distribute(): runs command on every worker node (run_command_on_workers); no rows anywhere else.';
REVOKE EXECUTE ON FUNCTION dialpad.on_worker_nodes(text) FROM PUBLIC;

CREATE FUNCTION dialpad.worker_node_stats()
RETURNS TABLE (node text, worker integer, pid integer, events_handled bigint, batches bigint, errors bigint,
               dead_lettered bigint, rejected_transitions bigint, last_batch_at timestamptz, started_at timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.node, s.*
      FROM dialpad.on_worker_nodes('SELECT coalesce(json_agg(s), ''[]'') FROM dialpad.worker_stats() s') n,
           json_to_recordset(CASE WHEN n.success THEN n.result::json ELSE '[]' END)
               AS s(worker integer, pid integer, events_handled bigint, batches bigint, errors bigint,
                    dead_lettered bigint, rejected_transitions bigint, last_batch_at timestamptz, started_at timestamptz)
$$;
COMMENT ON FUNCTION dialpad.worker_node_stats() IS
    'dialpad.worker_stats() of every worker node of a Citus cluster (from its coordinator), with the node.';
REVOKE EXECUTE ON FUNCTION dialpad.worker_node_stats() FROM PUBLIC;

CREATE FUNCTION dialpad.worker_node_status()
RETURNS TABLE (node text, component text, pid integer, running boolean, detail text, hint text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.node, s.component, s.pid, s.running, s.detail, s.hint
      FROM dialpad.on_worker_nodes('SELECT coalesce(json_agg(s), ''[]'') FROM dialpad.worker_status() s') n,
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

CREATE VIEW dialpad.worker_stats AS
SELECT 'local'::text AS node, s.* FROM dialpad.worker_stats() s
UNION ALL
SELECT * FROM dialpad.worker_node_stats();
COMMENT ON VIEW dialpad.worker_stats IS
    'Per worker (from shared memory, since server start): node (local: this server; on a Citus coordinator, also each worker node as host:port), pid, events handled, batches, failed events, dead-lettered events, rejected transitions, last batch time.';

GRANT SELECT ON dialpad.worker_stats TO dialpad_reader;
GRANT EXECUTE ON FUNCTION dialpad.worker_node_stats(), dialpad.worker_node_status(),
    dialpad.worker_node_processed_last_minute() TO dialpad_reader;
