-- References for the benchmarks (never installed by the extension): the same rules written
-- in PL/pgSQL, as a DBA would without pg_dialpad, and a set-based write-only ceiling.

CREATE SCHEMA IF NOT EXISTS bench;

-- The seed's sanitizer in PL/pgSQL, same limits and markers as dialpad.sanitize_call_payload.
CREATE OR REPLACE FUNCTION bench.sanitize_plpgsql(v jsonb, lvl integer DEFAULT 0, transcript boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text := jsonb_typeof(v);
    s text;
    lim integer;
    x jsonb;
    k text;
    result jsonb;
    n integer;
    kept integer := 0;
    sample jsonb := '[]';
BEGIN
    IF lvl > 5 THEN
        RETURN to_jsonb('[max depth exceeded]'::text);
    END IF;
    IF t = 'string' THEN
        s := v #>> '{}';
        lim := CASE WHEN transcript THEN 500 ELSE 2000 END;
        IF length(s) > lim AND NOT (s LIKE '%... [truncated]' AND length(s) <= lim + 15) THEN
            RETURN to_jsonb(left(s, lim) || '... [truncated]');
        END IF;
        RETURN v;
    ELSIF t = 'array' THEN
        n := jsonb_array_length(v);
        result := '[]';
        FOR x IN SELECT value FROM jsonb_array_elements(v) LOOP
            IF jsonb_typeof(x) = 'string' AND (x #>> '{}') ~* '^data:[^,]*;base64,' THEN
                CONTINUE;
            END IF;
            kept := kept + 1;
            IF kept <= 10 THEN
                result := result || jsonb_build_array(bench.sanitize_plpgsql(x, lvl + 1, transcript));
            END IF;
        END LOOP;
        IF kept > 10 THEN
            result := result || jsonb_build_array(bench.sanitize_plpgsql(
                jsonb_build_object('_truncated', true, 'total_items', n), lvl + 1));
        END IF;
        RETURN result;
    ELSIF t = 'object' THEN
        result := '{}';
        n := 0;
        FOR k, x IN SELECT key, value FROM jsonb_each(v) LOOP
            n := n + 1;
            IF lower(k) IN ('audio_data', 'file_data', 'binary_data', 'image_data', 'attachment_data')
               OR (jsonb_typeof(x) = 'string' AND (x #>> '{}') ~* '^data:[^,]*;base64,') THEN
                CONTINUE;
            END IF;
            kept := kept + 1;
            IF kept <= 5 THEN
                sample := sample || to_jsonb(k);
            END IF;
            result := result || jsonb_build_object(k, bench.sanitize_plpgsql(x, lvl + 1, k ILIKE '%transcript%'));
        END LOOP;
        IF lvl > 0 AND kept > 20 THEN
            RETURN bench.sanitize_plpgsql(jsonb_build_object('_truncated', true, 'sample_keys', sample, 'total_keys', n), lvl);
        END IF;
        RETURN result;
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION bench.ms(v jsonb) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS
$$ SELECT to_timestamp((v #>> '{}')::float8 / 1000) $$;

-- The processor in PL/pgSQL: same claim, same mapping and transition tables, same
-- sanitizing rules, one upsert per event.
CREATE OR REPLACE FUNCTION bench.process_events_plpgsql(max_events integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    e record;
    n integer := 0;
    cid bigint;
    cur text;
    cur_connected timestamptz;
    cur_dir text;
    m record;
    target text;
    dir text;
BEGIN
    FOR e IN
        WITH claimed AS (
            UPDATE dialpad.webhook_events w SET processed_at = now()
             WHERE w.id = ANY (ARRAY(
                   SELECT p.id FROM dialpad.webhook_events p
                    WHERE p.processed_at IS NULL AND p.dead_at IS NULL
                      AND (p.next_attempt_at IS NULL OR p.next_attempt_at <= now())
                    ORDER BY p.id, p.received_at LIMIT max_events FOR UPDATE SKIP LOCKED))
            RETURNING w.id, w.payload)
        SELECT * FROM claimed ORDER BY (payload->>'call_id')::bigint, (payload->>'event_timestamp')::bigint, id
    LOOP
        n := n + 1;
        cid := (e.payload->>'call_id')::bigint;
        SELECT status, connected_at, direction INTO cur, cur_connected, cur_dir
          FROM dialpad.calls WHERE dialpad_call_id = cid;
        dir := CASE WHEN lower(trim(e.payload->>'direction')) IN ('inbound', 'incoming', 'in') THEN 'inbound'
                    WHEN lower(trim(e.payload->>'direction')) IN ('outbound', 'outgoing', 'out') THEN 'outbound' END;
        SELECT * INTO m FROM dialpad.state_mapping WHERE state = e.payload->>'state';
        target := m.status;
        IF target IS NOT NULL AND e.payload->'date_connected' IS NULL AND cur_connected IS NULL THEN
            target := coalesce(CASE WHEN coalesce(dir, cur_dir) = 'outbound' THEN m.status_if_unanswered_outbound
                                    ELSE m.status_if_unanswered_inbound END, target);
        END IF;
        IF target IS NOT NULL AND cur IS NOT NULL AND target <> cur AND (
               (SELECT is_terminal FROM dialpad.call_statuses WHERE status = cur)
               OR NOT EXISTS (SELECT 1 FROM dialpad.status_transitions WHERE from_status = cur AND to_status = target)) THEN
            INSERT INTO dialpad.rejected_transitions (dialpad_call_id, event_id, from_status, to_status, reason)
            VALUES (cid, e.id, cur, target, 'not allowed');
            target := NULL;
        END IF;
        INSERT INTO dialpad.calls AS c (dialpad_call_id, direction, status, last_state, external_number, internal_number,
               started_at, connected_at, ended_at, duration_seconds, target_id, target_type, target_name,
               contact_id, contact_name, master_call_id, entry_point_call_id, operator_call_id,
               recording_url, voicemail_link, transcript, raw_payload, last_event_at)
        VALUES (cid, dir, coalesce(target, 'ringing'), e.payload->>'state', e.payload->>'external_number',
               e.payload->>'internal_number', bench.ms(e.payload->'date_started'), bench.ms(e.payload->'date_connected'),
               bench.ms(e.payload->'date_ended'), ((e.payload->>'duration')::float8 / 1000)::numeric(14,3),
               e.payload->'target'->>'id', e.payload->'target'->>'type', e.payload->'target'->>'name',
               e.payload->'contact'->>'id', e.payload->'contact'->>'name', (e.payload->>'master_call_id')::bigint,
               (e.payload->>'entry_point_call_id')::bigint, (e.payload->>'operator_call_id')::bigint,
               e.payload->'recording_details'->0->>'url', e.payload->>'voicemail_link',
               left(e.payload->>'transcription_text', 500), bench.sanitize_plpgsql(e.payload),
               bench.ms(e.payload->'event_timestamp'))
        ON CONFLICT (dialpad_call_id) DO UPDATE SET
               status = coalesce(target, c.status), direction = coalesce(EXCLUDED.direction, c.direction),
               last_state = EXCLUDED.last_state,
               external_number = coalesce(EXCLUDED.external_number, c.external_number),
               internal_number = coalesce(EXCLUDED.internal_number, c.internal_number),
               started_at = coalesce(EXCLUDED.started_at, c.started_at),
               connected_at = coalesce(EXCLUDED.connected_at, c.connected_at),
               ended_at = coalesce(EXCLUDED.ended_at, c.ended_at),
               duration_seconds = coalesce(EXCLUDED.duration_seconds, c.duration_seconds),
               target_id = coalesce(EXCLUDED.target_id, c.target_id), target_type = coalesce(EXCLUDED.target_type, c.target_type),
               target_name = coalesce(EXCLUDED.target_name, c.target_name),
               contact_id = coalesce(EXCLUDED.contact_id, c.contact_id), contact_name = coalesce(EXCLUDED.contact_name, c.contact_name),
               master_call_id = coalesce(EXCLUDED.master_call_id, c.master_call_id),
               entry_point_call_id = coalesce(EXCLUDED.entry_point_call_id, c.entry_point_call_id),
               recording_url = coalesce(EXCLUDED.recording_url, c.recording_url),
               voicemail_link = coalesce(EXCLUDED.voicemail_link, c.voicemail_link),
               transcript = coalesce(EXCLUDED.transcript, c.transcript),
               raw_payload = EXCLUDED.raw_payload, last_event_at = EXCLUDED.last_event_at, updated_at = now();
    END LOOP;
    RETURN n;
END
$$;

-- The ceiling: the same claim and the same calls writes (newest event per call), set-based,
-- with no rules and no sanitizing. The claim is planned as the worker's is, on the pending
-- index: left to itself, on statistics taken while every event was pending, the planner
-- walks the primary key with an incremental sort, past every event already processed, and
-- the reference slows from 28 ms to 117 ms a statement over a drain of 80,000 events.
CREATE OR REPLACE FUNCTION bench.process_events_ceiling(max_events integer) RETURNS integer
LANGUAGE sql SET enable_incremental_sort = off AS $$
WITH claimed AS (
    UPDATE dialpad.webhook_events w SET processed_at = now()
     WHERE w.id = ANY (ARRAY(
           SELECT p.id FROM dialpad.webhook_events p
            WHERE p.processed_at IS NULL AND p.dead_at IS NULL
              AND (p.next_attempt_at IS NULL OR p.next_attempt_at <= now())
            ORDER BY p.id, p.received_at LIMIT max_events FOR UPDATE SKIP LOCKED))
    RETURNING w.id, w.payload),
latest AS (
    SELECT DISTINCT ON ((payload->>'call_id')::bigint) (payload->>'call_id')::bigint AS cid, payload
      FROM claimed ORDER BY (payload->>'call_id')::bigint, (payload->>'event_timestamp')::bigint DESC),
up AS (
    INSERT INTO dialpad.calls AS c (dialpad_call_id, direction, status, last_state, external_number, internal_number,
           started_at, connected_at, ended_at, duration_seconds, target_id, target_type, target_name,
           contact_id, contact_name, master_call_id, entry_point_call_id, operator_call_id,
           recording_url, voicemail_link, transcript, raw_payload, last_event_at)
    SELECT cid, payload->>'direction', 'ringing', payload->>'state', payload->>'external_number',
           payload->>'internal_number', bench.ms(payload->'date_started'), bench.ms(payload->'date_connected'),
           bench.ms(payload->'date_ended'), ((payload->>'duration')::float8 / 1000)::numeric(14,3),
           payload->'target'->>'id', payload->'target'->>'type', payload->'target'->>'name',
           payload->'contact'->>'id', payload->'contact'->>'name', (payload->>'master_call_id')::bigint,
           (payload->>'entry_point_call_id')::bigint, (payload->>'operator_call_id')::bigint,
           payload->'recording_details'->0->>'url', payload->>'voicemail_link',
           payload->>'transcription_text', payload, bench.ms(payload->'event_timestamp')
      FROM latest
    ON CONFLICT (dialpad_call_id) DO UPDATE SET
           direction = EXCLUDED.direction, last_state = EXCLUDED.last_state,
           external_number = EXCLUDED.external_number, internal_number = EXCLUDED.internal_number,
           started_at = EXCLUDED.started_at, connected_at = EXCLUDED.connected_at, ended_at = EXCLUDED.ended_at,
           duration_seconds = EXCLUDED.duration_seconds, target_id = EXCLUDED.target_id,
           target_type = EXCLUDED.target_type, target_name = EXCLUDED.target_name,
           contact_id = EXCLUDED.contact_id, contact_name = EXCLUDED.contact_name,
           master_call_id = EXCLUDED.master_call_id, entry_point_call_id = EXCLUDED.entry_point_call_id,
           operator_call_id = EXCLUDED.operator_call_id, recording_url = EXCLUDED.recording_url,
           voicemail_link = EXCLUDED.voicemail_link, transcript = EXCLUDED.transcript,
           raw_payload = EXCLUDED.raw_payload, last_event_at = EXCLUDED.last_event_at, updated_at = now()
    RETURNING 1)
SELECT count(*)::integer FROM claimed
$$;
