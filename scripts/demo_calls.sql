-- The demo's calls: a few real calls as Dialpad delivers them, each leg with its own
-- call_id, grouped by master_call_id / entry_point_call_id as Dialpad groups them. The
-- scenarios are those of tests/regress/sql/analysts.sql (where their legs and real calls
-- are checked), started ten minutes ago and a minute apart:
--   an inbound call answered by Ada, recorded and transcribed;
--   a call Ada answers and transfers to Bob;
--   a call center: the caller queues, the operator's phone rings unanswered, Cid answers;
--   a call nobody answered; a voicemail; an outbound call Ada makes; a ring group (Sales)
--   whose three phones ring at once, Dan answering.
-- Loaded into pg_temp by scripts/demo; the tests and benchmarks use scripts/sample_events.sql.

-- ms after the start of call number `n` (a minute apart, the first ten minutes ago).
CREATE OR REPLACE FUNCTION pg_temp.demo_ms(n int, at int) RETURNS bigint
LANGUAGE sql AS $$
    SELECT (extract(epoch FROM date_trunc('second', now()))::bigint - 600 + 60 * n) * 1000 + at
$$;

-- One event of a leg: the leg's fields, its state, when, and more.
CREATE OR REPLACE FUNCTION pg_temp.demo_ev(leg jsonb, n int, state text, at int, extra jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql AS $$
    SELECT ((leg - 'starts_at')
            || jsonb_build_object('state', state, 'event_timestamp', pg_temp.demo_ms(n, at),
                                  'date_started', pg_temp.demo_ms(n, coalesce((leg->>'starts_at')::int, 0))))
           || extra
$$;

CREATE OR REPLACE FUNCTION pg_temp.dialpad_demo_events()
RETURNS TABLE (call text, seq int, payload jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    ada jsonb := '{"id": "5001", "type": "user", "name": "Ada"}';
    a jsonb; b jsonb; e jsonb; o jsonb; g jsonb; l jsonb;
    evs jsonb[];
    i int;
BEGIN
    -- 1. Inbound, answered by Ada, recorded, transcribed.
    l := jsonb_build_object('call_id', 1001, 'direction', 'inbound', 'external_number', '+14155550101',
                            'internal_number', '+16505550199', 'master_call_id', 1001, 'entry_point_call_id', 1001,
                            'target', ada);
    evs := ARRAY[
        pg_temp.demo_ev(l, 0, 'ringing', 500, jsonb_build_object('date_rang', pg_temp.demo_ms(0, 500))),
        pg_temp.demo_ev(l, 0, 'connected', 4000, jsonb_build_object('date_rang', pg_temp.demo_ms(0, 500), 'date_connected', pg_temp.demo_ms(0, 4000))),
        pg_temp.demo_ev(l, 0, 'hangup', 64000, jsonb_build_object('date_rang', pg_temp.demo_ms(0, 500), 'date_connected', pg_temp.demo_ms(0, 4000),
            'date_ended', pg_temp.demo_ms(0, 64000), 'duration', 60000, 'talk_time', 60000, 'hold_time', 0, 'total_duration', 64000)),
        pg_temp.demo_ev(l, 0, 'recording', 90000, jsonb_build_object('recording_details', jsonb_build_array(jsonb_build_object(
            'id', 'r-1', 'url', 'https://rec.example/1.mp3', 'recording_type', 'callrecording', 'duration', 59000,
            'start_time', pg_temp.demo_ms(0, 4000))))),
        pg_temp.demo_ev(l, 0, 'transcription', 95000, '{"transcription_text": "Hello, how can I help?"}')];
    FOR i IN 1 .. cardinality(evs) LOOP call := 'inbound answered'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;

    -- 2. Answered by Ada, transferred to Bob.
    a := jsonb_build_object('call_id', 2001, 'direction', 'inbound', 'external_number', '+14155550102',
                            'master_call_id', 2001, 'entry_point_call_id', 2001, 'target', ada);
    b := jsonb_build_object('call_id', 2002, 'direction', 'inbound', 'external_number', '+14155550102', 'starts_at', 33000,
                            'master_call_id', 2001, 'entry_point_call_id', 2001, 'transferred_from', '{"id": "5001"}'::jsonb,
                            'target', '{"id": "5002", "type": "user", "name": "Bob"}'::jsonb);
    evs := ARRAY[
        pg_temp.demo_ev(a, 1, 'ringing', 500, jsonb_build_object('date_rang', pg_temp.demo_ms(1, 500))),
        pg_temp.demo_ev(a, 1, 'connected', 3000, jsonb_build_object('date_connected', pg_temp.demo_ms(1, 3000))),
        pg_temp.demo_ev(a, 1, 'hangup', 33000, jsonb_build_object('date_connected', pg_temp.demo_ms(1, 3000), 'date_ended', pg_temp.demo_ms(1, 33000),
            'talk_time', 30000, 'is_transferred', true)),
        pg_temp.demo_ev(b, 1, 'ringing', 33200, jsonb_build_object('date_rang', pg_temp.demo_ms(1, 33200))),
        pg_temp.demo_ev(b, 1, 'connected', 35000, jsonb_build_object('date_rang', pg_temp.demo_ms(1, 33200), 'date_connected', pg_temp.demo_ms(1, 35000))),
        pg_temp.demo_ev(b, 1, 'hangup', 95000, jsonb_build_object('date_rang', pg_temp.demo_ms(1, 33200), 'date_connected', pg_temp.demo_ms(1, 35000),
            'date_ended', pg_temp.demo_ms(1, 95000), 'talk_time', 60000, 'hold_time', 4000))];
    FOR i IN 1 .. cardinality(evs) LOOP call := 'transferred'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;

    -- 3. Call center: queued, the operator's phone rings unanswered, Cid answers.
    e := jsonb_build_object('call_id', 3001, 'direction', 'inbound', 'external_number', '+14155550103',
                            'master_call_id', 3001, 'entry_point_call_id', 3001,
                            'target', '{"id": "cc-1", "type": "callcenter", "name": "Support"}'::jsonb);
    o := jsonb_build_object('call_id', 3002, 'direction', 'inbound', 'starts_at', 2000, 'master_call_id', 3001,
                            'entry_point_call_id', 3001, 'operator_call_id', 3002,
                            'target', '{"id": "5009", "type": "user", "name": "Operator"}'::jsonb);
    g := jsonb_build_object('call_id', 3003, 'direction', 'inbound', 'starts_at', 10000, 'master_call_id', 3001,
                            'entry_point_call_id', 3001, 'target', '{"id": "5003", "type": "user", "name": "Cid"}'::jsonb);
    evs := ARRAY[
        pg_temp.demo_ev(e, 2, 'queued', 1000, jsonb_build_object('date_queued', pg_temp.demo_ms(2, 1000))),
        pg_temp.demo_ev(o, 2, 'ringing', 2500, jsonb_build_object('date_rang', pg_temp.demo_ms(2, 2500))),
        pg_temp.demo_ev(o, 2, 'hangup', 10000, jsonb_build_object('date_rang', pg_temp.demo_ms(2, 2500), 'date_ended', pg_temp.demo_ms(2, 10000), 'talk_time', 0)),
        pg_temp.demo_ev(g, 2, 'ringing', 10100, jsonb_build_object('date_rang', pg_temp.demo_ms(2, 10100))),
        pg_temp.demo_ev(g, 2, 'connected', 15000, jsonb_build_object('date_rang', pg_temp.demo_ms(2, 10100), 'date_connected', pg_temp.demo_ms(2, 15000))),
        pg_temp.demo_ev(e, 2, 'connected', 15001, jsonb_build_object('date_queued', pg_temp.demo_ms(2, 1000), 'date_connected', pg_temp.demo_ms(2, 15000))),
        pg_temp.demo_ev(g, 2, 'hangup', 85000, jsonb_build_object('date_rang', pg_temp.demo_ms(2, 10100), 'date_connected', pg_temp.demo_ms(2, 15000),
            'date_ended', pg_temp.demo_ms(2, 85000), 'duration', 70000, 'talk_time', 70000, 'hold_time', 5000)),
        pg_temp.demo_ev(e, 2, 'hangup', 85001, jsonb_build_object('date_queued', pg_temp.demo_ms(2, 1000), 'date_connected', pg_temp.demo_ms(2, 15000),
            'date_ended', pg_temp.demo_ms(2, 85000), 'duration', 70000, 'talk_time', 70000))];
    FOR i IN 1 .. cardinality(evs) LOOP call := 'call center'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;

    -- 4. Missed: it rang, nobody answered.
    l := jsonb_build_object('call_id', 4001, 'direction', 'inbound', 'external_number', '+14155550104', 'target', ada);
    evs := ARRAY[
        pg_temp.demo_ev(l, 3, 'ringing', 500, jsonb_build_object('date_rang', pg_temp.demo_ms(3, 500))),
        pg_temp.demo_ev(l, 3, 'hangup', 30000, jsonb_build_object('date_rang', pg_temp.demo_ms(3, 500), 'date_ended', pg_temp.demo_ms(3, 30000)))];
    FOR i IN 1 .. cardinality(evs) LOOP call := 'missed'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;

    -- 5. Voicemail, uploaded after the hangup.
    l := jsonb_build_object('call_id', 6001, 'direction', 'inbound', 'external_number', '+14155550106', 'target', ada);
    evs := ARRAY[
        pg_temp.demo_ev(l, 4, 'ringing', 500, jsonb_build_object('date_rang', pg_temp.demo_ms(4, 500))),
        pg_temp.demo_ev(l, 4, 'voicemail', 20000, jsonb_build_object('date_rang', pg_temp.demo_ms(4, 500), 'voicemail_link', 'https://vm.example/6')),
        pg_temp.demo_ev(l, 4, 'hangup', 50000, jsonb_build_object('date_rang', pg_temp.demo_ms(4, 500), 'date_ended', pg_temp.demo_ms(4, 50000))),
        pg_temp.demo_ev(l, 4, 'voicemail_uploaded', 80000, jsonb_build_object('voicemail_link', 'https://vm.example/6',
            'recording_details', jsonb_build_array(jsonb_build_object('id', 'vm-6', 'url', 'https://rec.example/vm-6.mp3',
                'recording_type', 'voicemail', 'duration', 25000, 'start_time', pg_temp.demo_ms(4, 21000))))),
        pg_temp.demo_ev(l, 4, 'transcription', 120000, '{"transcription_text": "Please call me back."}')];
    FOR i IN 1 .. cardinality(evs) LOOP call := 'voicemail'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;

    -- 6. Outbound, answered.
    l := jsonb_build_object('call_id', 7001, 'direction', 'outbound', 'external_number', '+14155550107', 'target', ada);
    evs := ARRAY[
        pg_temp.demo_ev(l, 5, 'calling', 0),
        pg_temp.demo_ev(l, 5, 'connected', 5000, jsonb_build_object('date_connected', pg_temp.demo_ms(5, 5000))),
        pg_temp.demo_ev(l, 5, 'hangup', 65000, jsonb_build_object('date_connected', pg_temp.demo_ms(5, 5000), 'date_ended', pg_temp.demo_ms(5, 65000),
            'talk_time', 60000))];
    FOR i IN 1 .. cardinality(evs) LOOP call := 'outbound answered'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;

    -- 7. Ring group: the Sales department's leg rings Dan, Eve and Fay at once; Dan
    -- answers, the other two phones stop ringing unanswered.
    g := jsonb_build_object('call_id', 8001, 'direction', 'inbound', 'external_number', '+14155550108',
                            'master_call_id', 8001, 'entry_point_call_id', 8001,
                            'target', '{"id": "d-7", "type": "department", "name": "Sales"}'::jsonb);
    evs := ARRAY[
        pg_temp.demo_ev(g, 6, 'ringing', 300, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 300)))];
    FOR i IN 0 .. 2 LOOP
        l := jsonb_build_object('call_id', 8002 + i, 'direction', 'inbound', 'external_number', '+14155550108',
                                'starts_at', 500, 'master_call_id', 8001, 'entry_point_call_id', 8001,
                                'target', jsonb_build_object('id', (5004 + i)::text, 'type', 'user',
                                                             'name', (ARRAY['Dan', 'Eve', 'Fay'])[i + 1]));
        evs := evs || pg_temp.demo_ev(l, 6, 'ringing', 600 + i, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 600)));
        IF i = 0 THEN
            evs := evs || pg_temp.demo_ev(l, 6, 'connected', 7000, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 600), 'date_connected', pg_temp.demo_ms(6, 7000)))
                       || pg_temp.demo_ev(l, 6, 'hangup', 97000, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 600), 'date_connected', pg_temp.demo_ms(6, 7000),
                              'date_ended', pg_temp.demo_ms(6, 97000), 'duration', 90000, 'talk_time', 90000, 'hold_time', 0));
        ELSE
            evs := evs || pg_temp.demo_ev(l, 6, 'hangup', 7050 + i, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 600), 'date_ended', pg_temp.demo_ms(6, 7050 + i), 'talk_time', 0));
        END IF;
    END LOOP;
    evs := evs || pg_temp.demo_ev(g, 6, 'connected', 7001, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 300), 'date_connected', pg_temp.demo_ms(6, 7000)))
               || pg_temp.demo_ev(g, 6, 'hangup', 97001, jsonb_build_object('date_rang', pg_temp.demo_ms(6, 300), 'date_connected', pg_temp.demo_ms(6, 7000),
                      'date_ended', pg_temp.demo_ms(6, 97000), 'duration', 90000, 'talk_time', 90000));
    FOR i IN 1 .. cardinality(evs) LOOP call := 'ring group'; seq := i; payload := evs[i]; RETURN NEXT; END LOOP;
END
$$;
