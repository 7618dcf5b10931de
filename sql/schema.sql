-- pg_dialpad schema: the rule tables, the inbox of webhook events, the calls.
-- Everything is schema-qualified: this script must not depend on the installer's search_path.

-- ---------------------------------------------------------------------------------------------
-- Rules as data. A DBA edits these rows; functions and triggers see the edit from the next
-- statement on (see src/pipeline/rules.rs).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.call_statuses (
    status      text PRIMARY KEY CHECK (status OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]*$'),
    is_terminal boolean NOT NULL DEFAULT false,
    description text
);
COMMENT ON TABLE dialpad.call_statuses IS
    'The statuses a call can have. Nothing leaves a terminal status.';

CREATE TABLE dialpad.status_transitions (
    from_status text NOT NULL REFERENCES dialpad.call_statuses (status) ON DELETE CASCADE,
    to_status   text NOT NULL REFERENCES dialpad.call_statuses (status) ON DELETE CASCADE,
    PRIMARY KEY (from_status, to_status),
    CHECK (from_status OPERATOR(pg_catalog.<>) to_status)
);
COMMENT ON TABLE dialpad.status_transitions IS
    'Allowed status changes. The same status is always allowed (idempotent retries); a row leaving a terminal status is refused (nothing leaves a terminal status).';

CREATE TABLE dialpad.state_mapping (
    state  text PRIMARY KEY,
    status text REFERENCES dialpad.call_statuses (status),
    status_if_unanswered_inbound  text REFERENCES dialpad.call_statuses (status),
    status_if_unanswered_outbound text REFERENCES dialpad.call_statuses (status),
    description text,
    keep_terminal boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE dialpad.state_mapping IS
    'Dialpad event state -> call status. status NULL: an enrichment event that changes no status. The status_if_unanswered_* columns replace status when the event has no date_connected; such a status is a default conclusion that a later event of the call mapping to another terminal status refines.';
COMMENT ON COLUMN dialpad.state_mapping.keep_terminal IS
    'When the call already has a terminal status, the event confirms it (no change, no rejected transition): true for hangup, which follows voicemail, missed and blocked.';

INSERT INTO dialpad.call_statuses (status, is_terminal, description) VALUES
    ('ringing',   false, 'The call is being set up or is ringing.'),
    ('active',    false, 'Connected: the parties are talking (or on hold).'),
    ('ended',     true,  'The call was answered and has ended.'),
    ('missed',    true,  'An inbound call nobody answered.'),
    ('rejected',  true,  'Blocked, or an outbound call that was never answered.'),
    ('voicemail', true,  'The caller reached voicemail.');

INSERT INTO dialpad.status_transitions (from_status, to_status) VALUES
    ('ringing', 'active'), ('ringing', 'ended'), ('ringing', 'missed'),
    ('ringing', 'rejected'), ('ringing', 'voicemail'),
    ('active', 'ended'), ('active', 'voicemail');

INSERT INTO dialpad.state_mapping (state, status, status_if_unanswered_inbound, status_if_unanswered_outbound) VALUES
    ('calling', 'ringing', NULL, NULL), ('preanswer', 'ringing', NULL, NULL),
    ('ringing', 'ringing', NULL, NULL), ('queued', 'ringing', NULL, NULL),
    ('connected', 'active', NULL, NULL), ('hold', 'active', NULL, NULL),
    ('merged', 'active', NULL, NULL), ('parked', 'active', NULL, NULL),
    ('takeover', 'active', NULL, NULL),
    ('hangup', 'ended', 'missed', 'rejected'),
    ('missed', 'missed', NULL, NULL),
    ('voicemail', 'voicemail', NULL, NULL), ('voicemail_uploaded', 'voicemail', NULL, NULL),
    ('blocked', 'rejected', NULL, NULL),
    ('barge', NULL, NULL, NULL), ('monitor', NULL, NULL, NULL), ('eavesdrop', NULL, NULL, NULL),
    ('admin', NULL, NULL, NULL), ('postcall', NULL, NULL, NULL), ('recording', NULL, NULL, NULL),
    ('admin_recording', NULL, NULL, NULL), ('transcription', NULL, NULL, NULL),
    ('call_transcription', NULL, NULL, NULL), ('csat', NULL, NULL, NULL),
    ('pcsat', NULL, NULL, NULL), ('dispositions', NULL, NULL, NULL),
    ('call_moments', NULL, NULL, NULL), ('ai_playbook', NULL, NULL, NULL),
    ('recap_summary', NULL, NULL, NULL), ('recap_outcome', NULL, NULL, NULL),
    ('recap_purposes', NULL, NULL, NULL), ('recap_action_items', NULL, NULL, NULL);
UPDATE dialpad.state_mapping SET keep_terminal = true WHERE state = 'hangup';

-- pg_dump restores these rows after CREATE EXTENSION has inserted the defaults above; an
-- insert of an existing key therefore updates that row instead of failing, so that a DBA's
-- edits to the default rows survive a dump and restore.
CREATE FUNCTION dialpad.rule_upsert() RETURNS trigger
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
COMMENT ON FUNCTION dialpad.rule_upsert() IS
    'Trigger: an INSERT of an existing rule key updates that row (keeps edits across pg_dump/restore).';

CREATE TRIGGER call_statuses_upsert BEFORE INSERT ON dialpad.call_statuses
    FOR EACH ROW EXECUTE FUNCTION dialpad.rule_upsert();
CREATE TRIGGER status_transitions_upsert BEFORE INSERT ON dialpad.status_transitions
    FOR EACH ROW EXECUTE FUNCTION dialpad.rule_upsert();
CREATE TRIGGER state_mapping_upsert BEFORE INSERT ON dialpad.state_mapping
    FOR EACH ROW EXECUTE FUNCTION dialpad.rule_upsert();

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

-- ---------------------------------------------------------------------------------------------
-- The inbox: every delivery, kept whole and never modified (the audit log).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.webhook_events (
    id              bigserial,
    event_type      text,
    call_id         bigint,
    dedupe_key      text,
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    processed_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts OPERATOR(pg_catalog.>=) 0),
    last_error      text,
    next_attempt_at timestamptz,
    dead_at         timestamptz,
    duplicate_of    bigint,
    source          text,
    discarded_at    timestamptz,
    discard_reason  text
) PARTITION BY RANGE (received_at);
COMMENT ON TABLE dialpad.webhook_events IS
    'Inbox and immutable audit log of Dialpad webhook deliveries, partitioned by received_at (see dialpad.run_maintenance()). Pending: processed_at and dead_at NULL; due when next_attempt_at is NULL or past.';
COMMENT ON COLUMN dialpad.webhook_events.received_at IS 'When the delivery was stored; the partition key (dialpad.partition_interval wide partitions, dropped after dialpad.retention).';
-- Rows for which no partition exists yet (a backfill of old events, or a clock far ahead)
-- land here instead of failing; dialpad.run_maintenance() moves them into partitions.
CREATE TABLE dialpad.webhook_events_default PARTITION OF dialpad.webhook_events DEFAULT;
COMMENT ON TABLE dialpad.webhook_events_default IS
    'Events whose received_at no partition covers yet; dialpad.run_maintenance() moves them into their own partition. Its storage parameters are copied to every partition created.';
COMMENT ON COLUMN dialpad.webhook_events.event_type IS 'Set from payload->>''state'' on insert when not given.';
COMMENT ON COLUMN dialpad.webhook_events.dedupe_key IS 'call_id/state/event_timestamp@source (numbers in one canonical spelling; @source for a delivery through a webhook source), set on insert when all three are in the payload: deliveries with the same key are one event (Dialpad redelivers). A key past 200 bytes is call_id/# and a SHA-256 of its parts.';
COMMENT ON COLUMN dialpad.webhook_events.duplicate_of IS 'Set on a redelivery: the id of the first delivery of the same event. Kept in the audit log, never applied.';
COMMENT ON COLUMN dialpad.webhook_events.source IS 'The webhook source the delivery came through (set by dialpad.ingest_webhook from the verified source; NULL for plain inserts).';
COMMENT ON COLUMN dialpad.webhook_events.call_id IS 'Set from payload->''call_id'' on insert (NULL when it is not an integer).';
COMMENT ON COLUMN dialpad.webhook_events.payload IS 'The full event as delivered. Cannot be changed after insert.';
COMMENT ON COLUMN dialpad.webhook_events.processed_at IS 'When the event was applied to dialpad.calls; NULL while pending.';
COMMENT ON COLUMN dialpad.webhook_events.attempts IS 'How many times applying the event failed.';
COMMENT ON COLUMN dialpad.webhook_events.last_error IS 'The error of the last failed attempt.';
COMMENT ON COLUMN dialpad.webhook_events.next_attempt_at IS 'Earliest time of the next attempt after a failure (exponential backoff).';
COMMENT ON COLUMN dialpad.webhook_events.dead_at IS 'Set when the event was dead-lettered: it will not be tried again unless re-driven.';
COMMENT ON COLUMN dialpad.webhook_events.discarded_at IS 'Set when a DBA discarded the event (dialpad.discard_event): acknowledged, no longer counted as dead, kept for audit until retention drops its partition.';
COMMENT ON COLUMN dialpad.webhook_events.discard_reason IS 'Why the event was discarded (the reason given to dialpad.discard_event or dialpad.discard_dead_events).';

-- Indexes are per partition, not on the partitioned table: dialpad.add_partition() gives
-- every partition it makes the indexes of the DEFAULT partition below (a DBA who adds one
-- there gets it on every later partition). Parent-level indexes would be cloned into each
-- partition, which pg_dump cannot restore for an extension's table (it re-creates the clones
-- as plain indexes: "multiple primary keys"); per-partition ones dump and restore as any
-- table's. Each partition's primary key is the id alone (ids come from one sequence): no
-- index but the (call_id, dedupe_key, received_at) one has received_at, so the insert
-- trigger's lookup, bounded by received_at, can only be planned on that one (a primary key
-- (id, received_at) was chosen for it on stale statistics, scanning a partition per insert).
ALTER TABLE dialpad.webhook_events_default ADD CONSTRAINT webhook_events_default_pkey PRIMARY KEY (id);
-- The claim reads pending events in arrival order: a partial index that only ever holds the
-- backlog stays small however large the audit log grows. Its key is (id, received_at) and
-- the claim orders by both (the same order: ids are unique), so that this is the only index
-- that gives the claim its order: on statistics taken while a partition held only pending
-- events, the planner otherwise walked the primary key, through every event processed since.
CREATE INDEX webhook_events_default_pending ON dialpad.webhook_events_default (id, received_at)
    WHERE processed_at IS NULL AND dead_at IS NULL;
CREATE INDEX webhook_events_default_dead ON dialpad.webhook_events_default (dead_at)
    WHERE dead_at IS NOT NULL;
-- One index, two jobs (each index costs every insert and every processed mark): it finds the
-- first delivery of a redelivered event (the insert trigger marks the redelivery
-- duplicate_of it), and a call's history when an event arrives late. Not unique: every
-- delivery is stored, so no INSERT or COPY ever fails for a redelivery, and a unique index
-- could not span the time partitions of the inbox. received_at last: the trigger's lookup is
-- bounded by it (src/pipeline/dedupe.rs), so this index answers the lookup whole.
CREATE INDEX webhook_events_default_call_dedupe ON dialpad.webhook_events_default (call_id, dedupe_key, received_at);

CREATE FUNCTION dialpad.webhook_events_immutable() RETURNS trigger
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

-- Column-specific: the worker's updates of processing columns never pay for this check.
CREATE TRIGGER webhook_events_immutable BEFORE UPDATE OF id, payload, call_id, dedupe_key, received_at, source ON dialpad.webhook_events
    FOR EACH ROW EXECUTE FUNCTION dialpad.webhook_events_immutable();
ALTER TABLE dialpad.webhook_events ENABLE ALWAYS TRIGGER webhook_events_immutable;

-- ---------------------------------------------------------------------------------------------
-- Calls: one row per Dialpad call leg.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dialpad.calls (
    dialpad_call_id     bigint PRIMARY KEY,
    direction           text CHECK (direction IN ('inbound', 'outbound')),
    status              text NOT NULL REFERENCES dialpad.call_statuses (status),
    last_state          text,
    external_number     text,
    internal_number     text,
    started_at          timestamptz,
    connected_at        timestamptz,
    ended_at            timestamptz,
    duration_seconds    numeric(14, 3),
    target_id           text,
    target_type         text,
    target_name         text,
    contact_id          text,
    contact_name        text,
    master_call_id      bigint,
    entry_point_call_id bigint,
    operator_call_id    bigint,
    recording_url       text,
    voicemail_link      text,
    transcript          text,
    raw_payload         jsonb,
    last_event_at       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    events_applied      integer NOT NULL DEFAULT 0,
    source              text
);
COMMENT ON TABLE dialpad.calls IS
    'One row per Dialpad call leg. Triggers normalize direction and enforce dialpad.status_transitions on every write.';
COMMENT ON COLUMN dialpad.calls.dialpad_call_id IS 'Dialpad''s call_id of this leg (the key: one index less to maintain on every write than a surrogate id).';
COMMENT ON COLUMN dialpad.calls.direction IS 'inbound, outbound, or NULL when unknown (stored normalized whatever spelling is written).';
COMMENT ON COLUMN dialpad.calls.status IS 'One of dialpad.call_statuses; changes only along dialpad.status_transitions.';
COMMENT ON COLUMN dialpad.calls.last_state IS 'The Dialpad state of the last event applied.';
COMMENT ON COLUMN dialpad.calls.external_number IS 'The other party: the caller of an inbound call, the callee of an outbound one.';
COMMENT ON COLUMN dialpad.calls.internal_number IS 'The Dialpad number involved.';
COMMENT ON COLUMN dialpad.calls.started_at IS 'date_started (Dialpad sends epoch milliseconds).';
COMMENT ON COLUMN dialpad.calls.connected_at IS 'date_connected; NULL if nobody answered.';
COMMENT ON COLUMN dialpad.calls.ended_at IS 'date_ended.';
COMMENT ON COLUMN dialpad.calls.duration_seconds IS 'duration in seconds (Dialpad sends milliseconds).';
COMMENT ON COLUMN dialpad.calls.target_id IS 'The target (agent, department, ...) of the call.';
COMMENT ON COLUMN dialpad.calls.master_call_id IS 'Links the legs of one real call.';
COMMENT ON COLUMN dialpad.calls.entry_point_call_id IS 'The entry-point leg of the call.';
COMMENT ON COLUMN dialpad.calls.transcript IS 'transcription_text, cut as the sanitizer cuts transcripts.';
COMMENT ON COLUMN dialpad.calls.raw_payload IS 'The last applied event, sanitized by dialpad.sanitize_call_payload (the full one stays in webhook_events).';
COMMENT ON COLUMN dialpad.calls.last_event_at IS 'event_timestamp of the last event applied.';
COMMENT ON COLUMN dialpad.calls.events_applied IS 'How many events (redeliveries not counted) were applied to this row. When the inbox holds fewer (retention dropped older partitions), a late event is applied to the row as it stands rather than re-deriving the call from what is left.';
COMMENT ON COLUMN dialpad.calls.source IS 'The webhook source of the call''s first event (see dialpad.sources): the column for row-level security per company.';

-- No index on raw_payload: each event replaces it, and a GIN index cost every event a
-- rewrite of the call's entries, a pending-list cleanup that stalled the processor for tens
-- of milliseconds now and then, and HOT updates of the call row. An event is found by its
-- call in dialpad.webhook_events (call_id is indexed there).
CREATE INDEX calls_started_at ON dialpad.calls (started_at);

-- Invalid transitions attempted on dialpad.calls ("check invalid transitions" is a query).
CREATE TABLE dialpad.rejected_transitions (
    id              bigserial,
    dialpad_call_id bigint,
    event_id        bigint,
    from_status     text,
    to_status       text,
    reason          text,
    rejected_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
) PARTITION BY RANGE (rejected_at);
COMMENT ON TABLE dialpad.rejected_transitions IS
    'Every invalid status transition attempted on dialpad.calls while dialpad.invalid_transition = skip, and every event whose status the processor refused (event_id set). Partitioned by rejected_at and kept as long as the inbox (dialpad.retention).';
CREATE TABLE dialpad.rejected_transitions_default PARTITION OF dialpad.rejected_transitions DEFAULT;
COMMENT ON TABLE dialpad.rejected_transitions_default IS
    'Rejections whose rejected_at no partition covers yet; dialpad.run_maintenance() moves them into their own partition.';
ALTER TABLE dialpad.rejected_transitions_default ADD CONSTRAINT rejected_transitions_default_pkey PRIMARY KEY (id);
CREATE INDEX rejected_transitions_default_call ON dialpad.rejected_transitions_default (dialpad_call_id);

-- lz4 compresses and decompresses payloads several times faster than the default pglz (the
-- processor measured +13% events/s); used where the server supports it (PG 14+ built --with-lz4).
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_settings
                    WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE dialpad.webhook_events ALTER COLUMN payload SET COMPRESSION lz4;
        ALTER TABLE dialpad.calls ALTER COLUMN raw_payload SET COMPRESSION lz4;
    END IF;
END
$$;

-- Autovacuum, per table. Every event is updated once when processed and most calls a few
-- times, so both tables produce dead rows at the rate of the traffic; with the default
-- scale factor (20%) a 10-million-row audit log would wait for 2 million dead rows, and the
-- indexes the worker writes (the pending-claim index above all) would carry them until
-- then. At 2% autovacuum keeps up with the traffic; the insert threshold keeps the
-- visibility map (index-only scans, anti-wraparound freezing) of the append-mostly inbox
-- current. No fillfactor: the inbox cannot use HOT updates (processing changes a column of
-- the pending index's predicate); most call updates can (no index covers the columns an
-- event usually changes), and pruning the row's previous versions makes room for them in
-- its page: a fillfactor of 75 saved nothing measurable on a stream of deliveries.
ALTER TABLE dialpad.webhook_events_default SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE dialpad.calls SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02);

-- pg_dump keeps the rows of extension tables only when they are registered.
-- ---------------------------------------------------------------------------------------------
-- Webhook sources: one per Dialpad event subscription (or company), each with its secret.
-- Readable only by the extension's owner; dialpad.source_list shows everything but secrets.
-- ---------------------------------------------------------------------------------------------
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

CREATE VIEW dialpad.source_list WITH (security_invoker = true) AS
SELECT name, enabled, labels, created_at, rotated_at,
       CASE WHEN previous_valid_until OPERATOR(pg_catalog.>) pg_catalog.now() THEN previous_valid_until END
           AS previous_secret_valid_until
  FROM dialpad.sources;
COMMENT ON VIEW dialpad.source_list IS
    'The webhook sources without their secrets: name, enabled, labels, when added and rotated, and until when the previous secret still verifies.';

SELECT pg_catalog.pg_extension_config_dump('dialpad.call_statuses', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.status_transitions', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.state_mapping', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.deleted_rules', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.webhook_events_default', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.webhook_events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.calls', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.sources', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rejected_transitions_default', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rejected_transitions_id_seq', '');
