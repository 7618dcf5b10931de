-- pg_dialpad for analysts (docs/analysts.md): the leg columns of
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
-- Added in 0.3.0 (after logical_call_id, where the upgrade adds it too).
ALTER TABLE dialpad.calls ADD COLUMN transferred_from_id text;
COMMENT ON COLUMN dialpad.calls.transferred_from_id IS 'transferred_from.id: set only on the leg a transfer created (Dialpad marks is_transferred on the leg transferred away too). dialpad.logical_calls.transfers counts these legs.';

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
COMMENT ON COLUMN dialpad.logical_calls.transfers IS 'How many transfers the call went through: its legs that a transfer created (transferred_from_id set). Dialpad marks is_transferred on both legs of a transfer; counting that would count each transfer twice.';
COMMENT ON COLUMN dialpad.logical_calls.answered_by_target_id IS 'target.id of the leg that answered (see answered_at).';

CREATE INDEX logical_calls_started_at ON dialpad.logical_calls (started_at);
ALTER TABLE dialpad.logical_calls SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02);

-- Every call computed from its legs, live: the whole definition of dialpad.logical_calls,
-- readable by a DBA. A view, not a function: its query is parsed once (operators bound at
-- creation, whatever a caller's search_path), and a condition on logical_call_id reaches the
-- index on the legs, so the triggers below compute only the calls a statement touched.
CREATE VIEW dialpad.logical_calls_from_legs WITH (security_invoker = true) AS
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
COMMENT ON FUNCTION dialpad.calls_truncated() IS
    'Trigger on dialpad.calls: TRUNCATE of the legs empties dialpad.logical_calls (on Citus, each shard its colocated shards).';
CREATE TRIGGER calls_truncated AFTER TRUNCATE ON dialpad.calls
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_truncated();
ALTER TABLE dialpad.calls ENABLE ALWAYS TRIGGER calls_truncated;

REVOKE EXECUTE ON FUNCTION dialpad.rebuild_logical_calls(), dialpad.calls_truncated() FROM PUBLIC;

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
COMMENT ON FUNCTION dialpad.backfill_legs(integer) IS
    'Fills the leg columns of up to max_calls calls listed in dialpad.leg_backfill from the audit log (dialpad.run_maintenance() calls it); returns how many.';
REVOKE EXECUTE ON FUNCTION dialpad.backfill_legs(integer) FROM PUBLIC;
