-- pg_dialpad 0.2.1 -> 0.3.0 (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------------
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
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_counters_unflushed_wrapper';
CREATE FUNCTION dialpad."flush_ingest_counters"() RETURNS bigint
VOLATILE PARALLEL UNSAFE
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
