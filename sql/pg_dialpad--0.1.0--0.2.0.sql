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

-- DROP EXTENSION while the workers run and sessions ingest (src/drop_guard.rs).
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
    IF TG_TABLE_NAME = 'call_statuses' THEN
        UPDATE dialpad.call_statuses
           SET is_terminal = NEW.is_terminal, description = NEW.description
         WHERE status = NEW.status;
    ELSIF TG_TABLE_NAME = 'state_mapping' THEN
        UPDATE dialpad.state_mapping
           SET status = NEW.status,
               status_if_unanswered_inbound = NEW.status_if_unanswered_inbound,
               status_if_unanswered_outbound = NEW.status_if_unanswered_outbound,
               description = NEW.description,
               keep_terminal = NEW.keep_terminal
         WHERE state = NEW.state;
    ELSE
        PERFORM 1 FROM dialpad.status_transitions
          WHERE from_status = NEW.from_status AND to_status = NEW.to_status;
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
