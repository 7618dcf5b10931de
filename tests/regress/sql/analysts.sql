-- For analysts: the legs of real calls, delivered through dialpad.ingest_webhook, and
-- dialpad.logical_calls, one row per call as the caller lived it (README, "Calls as the
-- caller lived them"). Each scenario is delivered in event order; then again shuffled, with
-- every event delivered twice and the processor run after each delivery (late events), which
-- must give the same rows.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
DROP TABLE IF EXISTS scenario, legs_in_order, calls_in_order;
RESET client_min_messages;

CREATE TABLE scenario (name text, seq int, event jsonb, PRIMARY KEY (name, seq));
-- An event of leg `leg` at `at` ms after the call started, with the leg's fields and more.
CREATE FUNCTION ev(leg jsonb, state text, at int, extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $$ SELECT leg || jsonb_build_object('state', state, 'event_timestamp', 1787158700000 + at) || extra $$;
CREATE FUNCTION ms(at int) RETURNS bigint LANGUAGE sql AS $$ SELECT 1787158700000 + at $$;
CREATE FUNCTION add(name text, events jsonb[]) RETURNS text LANGUAGE sql AS $$
    INSERT INTO scenario SELECT name, i, events[i] FROM generate_subscripts(events, 1) i;
    SELECT format('%s: %s events', name, cardinality(events)) $$;

-- Delivers a scenario in event order (processed at the end), or shuffled with redeliveries
-- (processed after each delivery).
CREATE FUNCTION deliver(name text, shuffled boolean) RETURNS void LANGUAGE plpgsql AS $$
DECLARE e jsonb;
BEGIN
    TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions;
    IF NOT shuffled THEN
        PERFORM dialpad.ingest_webhook(s.event::text) FROM scenario s WHERE s.name = deliver.name ORDER BY s.seq;
        PERFORM dialpad.process_events(1000);
        RETURN;
    END IF;
    FOR e IN SELECT s.event FROM scenario s, generate_series(1, 2) copy
              WHERE s.name = deliver.name ORDER BY md5(s.seq || '/' || copy) LOOP
        PERFORM dialpad.ingest_webhook(e::text);
        PERFORM dialpad.process_events(1000);
    END LOOP;
END
$$;

CREATE VIEW legs AS
SELECT dialpad_call_id AS leg, logical_call_id AS call, direction, status, end_state,
       to_char(connected_at, 'MI:SS') AS connected, talk_seconds AS talk, hold_seconds AS hold,
       is_transferred AS transf, target_name, recording_url, voicemail_recording_url AS voicemail_audio,
       transcript IS NOT NULL AS transcript
  FROM dialpad.calls;
CREATE VIEW calls AS
SELECT logical_call_id AS call, direction, outcome, to_char(started_at, 'MI:SS') AS started,
       to_char(answered_at, 'MI:SS') AS answered, to_char(ended_at, 'MI:SS') AS ended,
       wait_seconds AS wait, talk_seconds AS talk, hold_seconds AS hold, legs, transfers,
       answered_by_name AS answered_by, external_number, recording_url, voicemail_link
  FROM dialpad.logical_calls;

-- Shows a scenario's legs and call, then checks that the shuffled, redelivered run gives
-- the same rows (both EXCEPT queries empty: 0).
CREATE FUNCTION check_shuffled(name text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE n_legs bigint; n_calls bigint; n_view bigint;
BEGIN
    PERFORM deliver(name, false);
    DROP TABLE IF EXISTS legs_in_order, calls_in_order;
    CREATE TABLE legs_in_order AS SELECT * FROM legs;
    CREATE TABLE calls_in_order AS SELECT * FROM calls;
    PERFORM deliver(name, true);
    SELECT count(*) INTO n_legs FROM ((TABLE legs EXCEPT TABLE legs_in_order) UNION ALL (TABLE legs_in_order EXCEPT TABLE legs)) d;
    SELECT count(*) INTO n_calls FROM ((TABLE calls EXCEPT TABLE calls_in_order) UNION ALL (TABLE calls_in_order EXCEPT TABLE calls)) d;
    -- the table the triggers keep is the view's definition, row for row
    SELECT count(*) INTO n_view FROM ((TABLE dialpad.logical_calls EXCEPT TABLE dialpad.logical_calls_from_legs)
                                      UNION ALL (TABLE dialpad.logical_calls_from_legs EXCEPT TABLE dialpad.logical_calls)) d;
    RETURN format('%s: shuffled and redelivered, legs differing: %s, calls differing: %s, table vs view: %s', name, n_legs, n_calls, n_view);
END
$$;

-- 1. Inbound, answered, with the recording, the transcription and a recap after the hangup
--    (none of which carries talk_time: the leg keeps it).
SELECT add('inbound_answered', ARRAY[
    ev(l, 'ringing', 500, jsonb_build_object('date_rang', ms(500))),
    ev(l, 'connected', 4000, jsonb_build_object('date_rang', ms(500), 'date_connected', ms(4000))),
    ev(l, 'hangup', 64000, jsonb_build_object('date_rang', ms(500), 'date_connected', ms(4000), 'date_ended', ms(64000),
        'duration', 60000, 'talk_time', 60000.25, 'hold_time', 0, 'total_duration', 64000)),
    ev(l, 'recording', 90000, jsonb_build_object('recording_details', jsonb_build_array(jsonb_build_object(
        'id', 'r-1', 'url', 'https://rec.example/1.mp3', 'recording_type', 'callrecording', 'duration', 59000, 'start_time', ms(4000))))),
    ev(l, 'transcription', 95000, '{"transcription_text": "Hello, how can I help?"}'),
    ev(l, 'recap_summary', 99000)])
  FROM (SELECT '{"call_id": 1001, "direction": "inbound", "external_number": "+14155550101", "internal_number": "+16505550199",
                 "date_started": 1787158700000, "master_call_id": 1001, "entry_point_call_id": 1001,
                 "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS l) x;

-- 2. Answered by Ada, transferred to Bob (a second leg, master_call_id the first, with
--    transferred_from). Dialpad marks both legs is_transferred: one transfer, counted once.
SELECT add('transferred', ARRAY[
    ev(a, 'ringing', 500, jsonb_build_object('date_rang', ms(500))),
    ev(a, 'connected', 3000, jsonb_build_object('date_connected', ms(3000))),
    ev(a, 'hangup', 33000, jsonb_build_object('date_connected', ms(3000), 'date_ended', ms(33000), 'talk_time', 30000, 'is_transferred', true)),
    ev(b, 'ringing', 33200, jsonb_build_object('date_rang', ms(33200))),
    ev(b, 'connected', 35000, jsonb_build_object('date_rang', ms(33200), 'date_connected', ms(35000))),
    ev(b, 'hangup', 95000, jsonb_build_object('date_rang', ms(33200), 'date_connected', ms(35000), 'date_ended', ms(95000), 'talk_time', 60000, 'hold_time', 4000, 'is_transferred', true))])
  FROM (SELECT '{"call_id": 2001, "direction": "inbound", "external_number": "+14155550102", "date_started": 1787158700000,
                 "master_call_id": 2001, "entry_point_call_id": 2001, "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS a,
               '{"call_id": 2002, "direction": "inbound", "external_number": "+14155550102", "date_started": 1787158733000,
                 "master_call_id": 2001, "entry_point_call_id": 2001, "transferred_from": {"id": "5001"},
                 "target": {"id": "5002", "type": "user", "name": "Bob"}}'::jsonb AS b) x;

-- 3. Call center: the entry leg queues the caller, the operator leg rings unanswered, Cid's
--    agent leg answers. The entry leg ends "ended" with the conversation's talk time too.
SELECT add('call_center', ARRAY[
    ev(e, 'queued', 1000, jsonb_build_object('date_queued', ms(1000))),
    ev(o, 'ringing', 2500, jsonb_build_object('date_rang', ms(2500))),
    ev(o, 'hangup', 10000, jsonb_build_object('date_rang', ms(2500), 'date_ended', ms(10000), 'talk_time', 0)),
    ev(g, 'ringing', 10100, jsonb_build_object('date_rang', ms(10100))),
    ev(g, 'connected', 15000, jsonb_build_object('date_rang', ms(10100), 'date_connected', ms(15000))),
    ev(e, 'connected', 15001, jsonb_build_object('date_queued', ms(1000), 'date_connected', ms(15000))),
    ev(g, 'hangup', 85000, jsonb_build_object('date_rang', ms(10100), 'date_connected', ms(15000), 'date_ended', ms(85000),
        'duration', 70000, 'talk_time', 70000, 'hold_time', 5000)),
    ev(e, 'hangup', 85001, jsonb_build_object('date_queued', ms(1000), 'date_connected', ms(15000), 'date_ended', ms(85000),
        'duration', 70000, 'talk_time', 70000)),
    ev(g, 'recording', 90000, jsonb_build_object('recording_details', jsonb_build_array(jsonb_build_object(
        'id', 'r-3', 'url', 'https://rec.example/3.mp3', 'recording_type', 'callrecording', 'start_time', ms(15000)))))])
  FROM (SELECT '{"call_id": 3001, "direction": "inbound", "external_number": "+14155550103", "date_started": 1787158700000,
                 "master_call_id": 3001, "entry_point_call_id": 3001, "target": {"id": "cc-1", "type": "callcenter", "name": "Support"}}'::jsonb AS e,
               '{"call_id": 3002, "direction": "inbound", "date_started": 1787158702000, "master_call_id": 3001,
                 "entry_point_call_id": 3001, "operator_call_id": 3002, "target": {"id": "5009", "type": "user", "name": "Operator"}}'::jsonb AS o,
               '{"call_id": 3003, "direction": "inbound", "date_started": 1787158710000, "master_call_id": 3001,
                 "entry_point_call_id": 3001, "target": {"id": "5003", "type": "user", "name": "Cid"}}'::jsonb AS g) x;

-- 4. Missed: it rang, nobody answered.
SELECT add('missed', ARRAY[
    ev(l, 'ringing', 500, jsonb_build_object('date_rang', ms(500))),
    ev(l, 'hangup', 30000, jsonb_build_object('date_rang', ms(500), 'date_ended', ms(30000)))])
  FROM (SELECT '{"call_id": 4001, "direction": "inbound", "external_number": "+14155550104", "date_started": 1787158700000,
                 "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS l) x;

-- 5. Abandoned in the queue: the caller hung up before any phone rang.
SELECT add('abandoned', ARRAY[
    ev(l, 'queued', 1000, jsonb_build_object('date_queued', ms(1000))),
    ev(l, 'hangup', 40000, jsonb_build_object('date_queued', ms(1000), 'date_ended', ms(40000), 'talk_time', 0))])
  FROM (SELECT '{"call_id": 5001, "direction": "inbound", "external_number": "+14155550105", "date_started": 1787158700000,
                 "master_call_id": 5001, "target": {"id": "cc-1", "type": "callcenter", "name": "Support"}}'::jsonb AS l) x;

-- 6. Voicemail: the message uploaded after the hangup, its transcription later still. Its
--    audio is the voicemail, not a call recording.
SELECT add('voicemail', ARRAY[
    ev(l, 'ringing', 500, jsonb_build_object('date_rang', ms(500))),
    ev(l, 'voicemail', 20000, jsonb_build_object('date_rang', ms(500), 'voicemail_link', 'https://vm.example/6')),
    ev(l, 'hangup', 50000, jsonb_build_object('date_rang', ms(500), 'date_ended', ms(50000))),
    ev(l, 'voicemail_uploaded', 80000, jsonb_build_object('voicemail_link', 'https://vm.example/6',
        'recording_details', jsonb_build_array(jsonb_build_object('id', 'vm-6', 'url', 'https://rec.example/vm-6.mp3',
            'recording_type', 'voicemail', 'duration', 25000, 'start_time', ms(21000))))),
    ev(l, 'transcription', 120000, '{"transcription_text": "Please call me back."}')])
  FROM (SELECT '{"call_id": 6001, "direction": "inbound", "external_number": "+14155550106", "date_started": 1787158700000,
                 "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS l) x;

-- 7. Outbound, answered.
SELECT add('outbound_answered', ARRAY[
    ev(l, 'calling', 0),
    ev(l, 'preanswer', 1000),
    ev(l, 'connected', 5000, jsonb_build_object('date_connected', ms(5000))),
    ev(l, 'hangup', 65000, jsonb_build_object('date_connected', ms(5000), 'date_ended', ms(65000), 'talk_time', 60000)),
    ev(l, 'postcall', 70000)])
  FROM (SELECT '{"call_id": 7001, "direction": "outbound", "external_number": "+14155550107", "date_started": 1787158700000,
                 "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS l) x;

-- 8. Outbound, nobody picked up.
SELECT add('outbound_unanswered', ARRAY[
    ev(l, 'calling', 0),
    ev(l, 'hangup', 30000, jsonb_build_object('date_ended', ms(30000)))])
  FROM (SELECT '{"call_id": 8001, "direction": "outgoing", "external_number": "+14155550108", "date_started": 1787158700000,
                 "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS l) x;

-- 9. Blocked (then the hangup that follows it).
SELECT add('blocked', ARRAY[
    ev(l, 'blocked', 100),
    ev(l, 'hangup', 200, jsonb_build_object('date_ended', ms(200)))])
  FROM (SELECT '{"call_id": 9001, "direction": "inbound", "external_number": "+14155550109", "date_started": 1787158700000}'::jsonb AS l) x;

-- 10. Hold, park and merge within one answered leg.
SELECT add('hold_park_merge', ARRAY[
    ev(l, 'ringing', 500, jsonb_build_object('date_rang', ms(500))),
    ev(l, 'connected', 3000, jsonb_build_object('date_connected', ms(3000))),
    ev(l, 'hold', 20000, jsonb_build_object('date_connected', ms(3000))),
    ev(l, 'connected', 30000, jsonb_build_object('date_connected', ms(3000))),
    ev(l, 'parked', 40000, jsonb_build_object('date_connected', ms(3000))),
    ev(l, 'takeover', 45000, jsonb_build_object('date_connected', ms(3000))),
    ev(l, 'merged', 50000, jsonb_build_object('date_connected', ms(3000))),
    ev(l, 'hangup', 90000, jsonb_build_object('date_connected', ms(3000), 'date_ended', ms(90000), 'talk_time', 72000, 'hold_time', 15000))])
  FROM (SELECT '{"call_id": 10001, "direction": "inbound", "external_number": "+14155550110", "date_started": 1787158700000,
                 "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS l) x;

-- 11. Conference: Ada, talking to the caller, calls Bob and merges him in; Bob's leg ends
--     within Ada's, so the caller's conversation is Ada's leg (counted once).
SELECT add('conference', ARRAY[
    ev(a, 'ringing', 500, jsonb_build_object('date_rang', ms(500))),
    ev(a, 'connected', 3000, jsonb_build_object('date_connected', ms(3000))),
    ev(b, 'calling', 30000),
    ev(b, 'connected', 32000, jsonb_build_object('date_connected', ms(32000))),
    ev(b, 'merged', 40000, jsonb_build_object('date_connected', ms(32000))),
    ev(b, 'hangup', 90000, jsonb_build_object('date_connected', ms(32000), 'date_ended', ms(90000), 'talk_time', 58000)),
    ev(a, 'hangup', 100000, jsonb_build_object('date_connected', ms(3000), 'date_ended', ms(100000), 'talk_time', 97000))])
  FROM (SELECT '{"call_id": 11001, "direction": "inbound", "external_number": "+14155550111", "date_started": 1787158700000,
                 "master_call_id": 11001, "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS a,
               '{"call_id": 11002, "direction": "outbound", "external_number": "+14155550199", "date_started": 1787158730000,
                 "master_call_id": 11001, "target": {"id": "5001", "type": "user", "name": "Ada"}}'::jsonb AS b) x;

\pset null '·'
\x on
SELECT check_shuffled('inbound_answered');
TABLE legs;
TABLE calls;
SELECT check_shuffled('transferred');
SELECT * FROM legs ORDER BY leg;
TABLE calls;
SELECT check_shuffled('call_center');
SELECT * FROM legs ORDER BY leg;
TABLE calls;
SELECT check_shuffled('missed');
TABLE legs;
TABLE calls;
SELECT check_shuffled('abandoned');
TABLE legs;
TABLE calls;
SELECT check_shuffled('voicemail');
TABLE legs;
TABLE calls;
SELECT check_shuffled('outbound_answered');
TABLE legs;
TABLE calls;
SELECT check_shuffled('outbound_unanswered');
TABLE legs;
TABLE calls;
SELECT check_shuffled('blocked');
TABLE legs;
TABLE calls;
SELECT check_shuffled('hold_park_merge');
TABLE legs;
TABLE calls;
SELECT check_shuffled('conference');
SELECT * FROM legs ORDER BY leg;
TABLE calls;
\x off

-- The recordings of a leg, each once, in the order they started.
SELECT deliver('inbound_answered', true) IS NULL AS delivered;
SELECT recordings FROM dialpad.calls;

-- Every scenario at once: the README's example queries.
TRUNCATE dialpad.webhook_events, dialpad.calls;
SELECT count(dialpad.ingest_webhook(event::text)) FROM scenario;
SELECT dialpad.process_events(1000) > 0 AS processed;
SELECT outcome, count(*) FROM dialpad.logical_calls GROUP BY outcome ORDER BY outcome;
-- Missed calls per day (what a caller who was not served counts as).
SELECT date_trunc('day', started_at) AS day,
       count(*) FILTER (WHERE outcome IN ('missed', 'abandoned', 'voicemail')) AS not_served,
       count(*) FILTER (WHERE outcome = 'answered') AS answered
  FROM dialpad.logical_calls WHERE direction = 'inbound' GROUP BY 1 ORDER BY 1;
-- Average wait and talk time per agent.
SELECT answered_by_name AS agent, count(*) AS calls, round(avg(wait_seconds), 1) AS avg_wait_s,
       round(avg(talk_seconds), 1) AS avg_talk_s
  FROM dialpad.logical_calls WHERE outcome = 'answered' GROUP BY 1 ORDER BY 1;

-- Rows written by hand keep logical_calls in step too: a leg moved to another call, a leg
-- deleted, the table truncated.
UPDATE dialpad.calls SET master_call_id = 1001 WHERE dialpad_call_id = 4001;
SELECT logical_call_id, outcome, legs FROM dialpad.logical_calls WHERE logical_call_id IN (1001, 4001) ORDER BY 1;
DELETE FROM dialpad.calls WHERE dialpad_call_id = 1001;
SELECT logical_call_id, outcome, legs FROM dialpad.logical_calls WHERE logical_call_id IN (1001, 4001) ORDER BY 1;
SELECT count(*) AS rows_differing FROM (
    (TABLE dialpad.logical_calls EXCEPT TABLE dialpad.logical_calls_from_legs)
    UNION ALL
    (TABLE dialpad.logical_calls_from_legs EXCEPT TABLE dialpad.logical_calls)) d;
SELECT dialpad.rebuild_logical_calls() AS rebuilt;
TRUNCATE dialpad.calls;
SELECT count(*) FROM dialpad.logical_calls;

-- One statement writing the legs of more calls than a refresh handles in one round (5,000:
-- a restore's COPY, a backfill): every call gets its row.
INSERT INTO dialpad.calls (dialpad_call_id, status, master_call_id)
SELECT 20000 + i, 'ringing', 20000 + i - i % 2 FROM generate_series(1, 12000) i;
SELECT count(*) AS calls, (SELECT count(*) FROM dialpad.logical_calls_from_legs) AS defined,
       count(*) FILTER (WHERE legs = 2) AS with_two_legs
  FROM dialpad.logical_calls;
TRUNCATE dialpad.calls;

-- Bad leg fields: a wrong type is refused with the field named (the event is dead-lettered,
-- kept whole); an unreadable csat_score is left out.
TRUNCATE dialpad.webhook_events;
SELECT dialpad.ingest_webhook('{"call_id": 12001, "state": "hangup", "event_timestamp": 1787158700000, "talk_time": "long"}') > 0 AS stored;
SELECT dialpad.ingest_webhook('{"call_id": 12002, "state": "csat", "event_timestamp": 1787158700000, "csat_score": "great", "labels": ["vip"]}') > 0 AS stored;
SELECT dialpad.process_events(100);
SELECT call_id, last_error, dead_at IS NOT NULL AS dead FROM dialpad.webhook_events ORDER BY id;
SELECT dialpad_call_id, csat_score, labels FROM dialpad.calls;

DROP TABLE scenario, legs_in_order, calls_in_order CASCADE;
DROP VIEW legs, calls;
DROP FUNCTION ev, ms, add, deliver, check_shuffled;
