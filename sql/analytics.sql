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
    'One row per real call (the legs of dialpad.calls grouped by logical_call_id), as the caller lived it. Kept by triggers on dialpad.calls in the writing transaction; computed by dialpad.logical_call_rows(), rebuilt whole by dialpad.rebuild_logical_calls().';
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

-- The rows of dialpad.logical_calls for the logical call ids given, computed from the legs
-- (a call without legs has no row). Readable by a DBA: this is the whole definition.
CREATE FUNCTION dialpad.logical_call_rows(ids bigint[]) RETURNS SETOF dialpad.logical_calls
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
     WHERE c.logical_call_id = ANY (ids)
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
), leg AS (
    -- counted: the legs whose talk makes the conversation. Not a carrier root; not a leg that
    -- joined a person's root leg and ended within it (a conference: the caller was talking
    -- on the root leg all along); every leg of a transfer.
    SELECT leg2.*,
           answered AND NOT (is_root AND carrier)
               AND (is_root OR carrier OR root_connected IS NULL
                    OR NOT (connected_at >= root_connected AND end_or_open <= root_end)) AS counted
      FROM leg2
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
           min(connected_at) FILTER (WHERE answered AND NOT (is_root AND carrier)) AS answered_at,
           (array_agg(target_id ORDER BY connected_at, dialpad_call_id)
               FILTER (WHERE answered AND NOT (is_root AND carrier)))[1] AS agent_id,
           (array_agg(target_name ORDER BY connected_at, dialpad_call_id)
               FILTER (WHERE answered AND NOT (is_root AND carrier)))[1] AS agent_name,
           (array_agg(direction ORDER BY is_root DESC, started_at, dialpad_call_id)
               FILTER (WHERE direction IS NOT NULL))[1] AS direction,
           (array_agg(external_number ORDER BY is_root DESC, started_at, dialpad_call_id)
               FILTER (WHERE external_number IS NOT NULL))[1] AS external_number,
           (array_agg(internal_number ORDER BY is_root DESC, started_at, dialpad_call_id)
               FILTER (WHERE internal_number IS NOT NULL))[1] AS internal_number,
           (array_agg(contact_id ORDER BY is_root DESC, started_at, dialpad_call_id)
               FILTER (WHERE contact_id IS NOT NULL))[1] AS contact_id,
           (array_agg(contact_name ORDER BY is_root DESC, started_at, dialpad_call_id)
               FILTER (WHERE contact_name IS NOT NULL))[1] AS contact_name,
           (array_agg(recording_url ORDER BY counted DESC, connected_at, dialpad_call_id)
               FILTER (WHERE recording_url IS NOT NULL))[1] AS recording_url,
           (array_agg(COALESCE(voicemail_link, voicemail_recording_url) ORDER BY started_at, dialpad_call_id)
               FILTER (WHERE COALESCE(voicemail_link, voicemail_recording_url) IS NOT NULL))[1] AS voicemail_link,
           (array_agg(source ORDER BY is_root DESC, started_at, dialpad_call_id)
               FILTER (WHERE source IS NOT NULL))[1] AS source
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
            ELSE 'missed' END,
       started_at,
       answered_at,
       CASE WHEN ended THEN ended_at END,
       round(EXTRACT(epoch FROM answered_at - started_at), 3),
       talk_seconds,
       hold_seconds,
       legs::integer,
       transfers::integer,
       agent_id,
       agent_name,
       external_number,
       internal_number,
       contact_id,
       contact_name,
       recording_url,
       voicemail_link,
       source,
       last_event_at
  FROM g
$$;
COMMENT ON FUNCTION dialpad.logical_call_rows(bigint[]) IS
    'The dialpad.logical_calls rows of the given logical call ids, computed from their legs in dialpad.calls: the definition of every column and of outcome.';

-- Brings the rows of the given logical calls up to date with their legs, in the caller's
-- transaction. Concurrent writers of legs of one call (two workers, two legs) are serialized
-- on its row, and whoever comes second computes after the first has committed, so the row
-- never misses a leg.
CREATE FUNCTION dialpad.refresh_logical_calls(ids bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh bigint[];
    rest  bigint[];
BEGIN
    -- Calls seen for the first time: computed and inserted. A concurrent writer of the same
    -- new call waits on the insert for this transaction, then takes the path below.
    WITH ins AS (
        INSERT INTO dialpad.logical_calls
        SELECT * FROM dialpad.logical_call_rows(ARRAY(
            SELECT DISTINCT i FROM pg_catalog.unnest(ids) i
             WHERE i IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM dialpad.logical_calls l WHERE l.logical_call_id = i))) r
         ORDER BY r.logical_call_id
        ON CONFLICT (logical_call_id) DO NOTHING
        RETURNING logical_call_id)
    SELECT COALESCE(array_agg(logical_call_id), '{}') INTO fresh FROM ins;
    rest := ARRAY(SELECT DISTINCT i FROM pg_catalog.unnest(ids) i WHERE i IS NOT NULL AND i <> ALL (fresh) ORDER BY i);
    IF cardinality(rest) = 0 THEN
        RETURN;
    END IF;
    -- Known calls: lock their rows (in id order), then compute from a snapshot taken after
    -- the lock, which sees every leg committed by the writer that held it.
    PERFORM 1 FROM dialpad.logical_calls WHERE logical_call_id = ANY (rest)
      ORDER BY logical_call_id FOR NO KEY UPDATE;
    WITH r AS (
        SELECT * FROM dialpad.logical_call_rows(rest)
    ), upd AS (
        UPDATE dialpad.logical_calls l
           SET (direction, outcome, started_at, answered_at, ended_at, wait_seconds, talk_seconds,
                hold_seconds, legs, transfers, answered_by_target_id, answered_by_name,
                external_number, internal_number, contact_id, contact_name, recording_url,
                voicemail_link, source, last_event_at)
             = (r.direction, r.outcome, r.started_at, r.answered_at, r.ended_at, r.wait_seconds,
                r.talk_seconds, r.hold_seconds, r.legs, r.transfers, r.answered_by_target_id,
                r.answered_by_name, r.external_number, r.internal_number, r.contact_id,
                r.contact_name, r.recording_url, r.voicemail_link, r.source, r.last_event_at)
          FROM r
         WHERE l.logical_call_id = r.logical_call_id AND l IS DISTINCT FROM r
    ), ins AS (
        INSERT INTO dialpad.logical_calls
        SELECT * FROM r
         WHERE NOT EXISTS (SELECT 1 FROM dialpad.logical_calls l WHERE l.logical_call_id = r.logical_call_id)
        ON CONFLICT (logical_call_id) DO NOTHING
    )
    DELETE FROM dialpad.logical_calls l
     WHERE l.logical_call_id = ANY (rest)
       AND NOT EXISTS (SELECT 1 FROM r WHERE r.logical_call_id = l.logical_call_id);
END
$$;
COMMENT ON FUNCTION dialpad.refresh_logical_calls(bigint[]) IS
    'Brings the dialpad.logical_calls rows of the given logical call ids up to date with their legs (what the triggers on dialpad.calls do).';

-- Every row again from the legs: after an edit of dialpad.call_statuses that changes which
-- statuses are terminal, or to repair. Writers of dialpad.calls wait meanwhile.
CREATE FUNCTION dialpad.rebuild_logical_calls() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE dialpad.calls IN SHARE MODE;
    DELETE FROM dialpad.logical_calls;
    INSERT INTO dialpad.logical_calls
    SELECT * FROM dialpad.logical_call_rows(ARRAY(SELECT DISTINCT logical_call_id FROM dialpad.calls));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dialpad.rebuild_logical_calls() IS
    'Recomputes every row of dialpad.logical_calls from dialpad.calls (blocking writers of calls meanwhile); returns the number of rows.';

CREATE FUNCTION dialpad.calls_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE dialpad.logical_calls;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM dialpad.refresh_logical_calls(ARRAY(SELECT logical_call_id FROM new_legs));
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM dialpad.refresh_logical_calls(ARRAY(
            SELECT logical_call_id FROM new_legs UNION SELECT logical_call_id FROM old_legs));
    ELSE
        PERFORM dialpad.refresh_logical_calls(ARRAY(SELECT logical_call_id FROM old_legs));
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION dialpad.calls_changed() IS
    'Trigger on dialpad.calls: refreshes the dialpad.logical_calls rows of the legs a statement wrote (once per statement).';

-- One trigger per event: a trigger with transition tables can have only one.
CREATE TRIGGER calls_logical_insert AFTER INSERT ON dialpad.calls
    REFERENCING NEW TABLE AS new_legs FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_changed();
CREATE TRIGGER calls_logical_update AFTER UPDATE ON dialpad.calls
    REFERENCING OLD TABLE AS old_legs NEW TABLE AS new_legs FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_changed();
CREATE TRIGGER calls_logical_delete AFTER DELETE ON dialpad.calls
    REFERENCING OLD TABLE AS old_legs FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_changed();
CREATE TRIGGER calls_logical_truncate AFTER TRUNCATE ON dialpad.calls
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_changed();
ALTER TABLE dialpad.calls ENABLE ALWAYS TRIGGER calls_logical_insert,
    ENABLE ALWAYS TRIGGER calls_logical_update, ENABLE ALWAYS TRIGGER calls_logical_delete,
    ENABLE ALWAYS TRIGGER calls_logical_truncate;

REVOKE EXECUTE ON FUNCTION dialpad.refresh_logical_calls(bigint[]), dialpad.rebuild_logical_calls() FROM PUBLIC;
