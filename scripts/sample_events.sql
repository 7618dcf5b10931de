-- Realistic, reproducible Dialpad call events (shaped as in shared/DIALPAD.md), used by the
-- demo, the integration tests and the benchmarks. Creates pg_temp functions only.
--
--   SELECT * FROM pg_temp.dialpad_sample_events(n_calls, first_call_id, seed, heavy)
--
-- returns (call_id, kind, seq, payload): 3 to 5 events per call, in event order. kind is one
-- of answered_inbound, missed_inbound, voicemail, outbound_answered, and decides the status
-- the call must end in (ended, missed, voicemail, ended). heavy adds what makes real payloads
-- big: long transcripts, 25-item breadcrumbs, 60-key integrations, base64 audio.

CREATE OR REPLACE FUNCTION pg_temp.dialpad_party(kind text, n bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', CASE WHEN kind = 'user' THEN to_jsonb(5000 + n % 97) ELSE to_jsonb('c-' || n) END,
        'type', kind,
        'name', CASE WHEN kind = 'user' THEN 'Agent ' || (n % 97) ELSE 'Customer ' || n END,
        'phone', '+1415' || lpad((n % 10000000)::text, 7, '0'),
        'email', CASE WHEN kind = 'user' THEN 'agent' || (n % 97) || '@example.com' END,
        'office_id', CASE WHEN kind = 'user' THEN to_jsonb(42) END)
$$;

CREATE OR REPLACE FUNCTION pg_temp.dialpad_sample_events(
    n_calls integer, first_call_id bigint DEFAULT 6612345678900000, seed float8 DEFAULT 0.42,
    heavy boolean DEFAULT true)
RETURNS TABLE (call_id bigint, kind text, seq integer, payload jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    r float8;
    k text;
    states text[];
    t0 bigint;
    cid bigint;
    dir text;
    s integer;
    ev jsonb;
    connected bigint;
    ended bigint;
    big_integrations jsonb;
    breadcrumbs jsonb;
    transcript text;
BEGIN
    PERFORM setseed(seed);
    SELECT jsonb_object_agg('crm_field_' || g, 'value ' || g || ' ' || repeat('x', 20))
      INTO big_integrations FROM generate_series(1, 60) g;
    SELECT jsonb_agg(jsonb_build_object('target_id', 9000 + g, 'target_type', 'department',
                                        'name', 'Routing step ' || g, 'date', 1787158716092 + g))
      INTO breadcrumbs FROM generate_series(1, 25) g;
    FOR i IN 0 .. n_calls - 1 LOOP
        r := random();
        cid := first_call_id + i;
        t0 := 1787158716092 + i::bigint * 1500;
        IF r < 0.40 THEN
            k := 'answered_inbound'; dir := (ARRAY['inbound', 'incoming', 'Inbound', 'in'])[1 + (i % 4)];
            states := CASE WHEN i % 3 = 0 THEN ARRAY['queued', 'ringing', 'connected', 'hangup', 'recording']
                           ELSE ARRAY['ringing', 'connected', 'hangup', 'transcription'] END;
        ELSIF r < 0.60 THEN
            k := 'missed_inbound'; dir := (ARRAY['inbound', 'INCOMING'])[1 + (i % 2)];
            states := ARRAY['ringing', 'missed', 'hangup'];
        ELSIF r < 0.75 THEN
            k := 'voicemail'; dir := 'inbound';
            states := ARRAY['ringing', 'voicemail', 'hangup', 'voicemail_uploaded'];
        ELSE
            k := 'outbound_answered'; dir := (ARRAY['outbound', 'outgoing', 'out'])[1 + (i % 3)];
            states := CASE WHEN i % 2 = 0 THEN ARRAY['calling', 'preanswer', 'connected', 'hangup', 'postcall']
                           ELSE ARRAY['calling', 'connected', 'hangup'] END;
        END IF;
        connected := CASE WHEN k IN ('answered_inbound', 'outbound_answered') THEN t0 + 4000 END;
        ended := t0 + 65000;
        transcript := CASE WHEN heavy AND random() < 0.2
                           THEN repeat('Customer asked about the invoice and the agent explained the charges. ', 300 + (random() * 400)::int)
                           ELSE 'Short call about an order.' END;
        FOR s IN 1 .. array_length(states, 1) LOOP
            ev := jsonb_build_object(
                'call_id', cid,
                'state', states[s],
                'direction', dir,
                'external_number', '+1415' || lpad((i % 10000000)::text, 7, '0'),
                'internal_number', '+16505550199',
                'selected_caller_id', '+16505550199',
                'date_started', t0,
                'date_rang', t0 + 300,
                'date_first_rang', t0 + 300,
                'date_queued', CASE WHEN states[1] = 'queued' THEN t0 + 100 END,
                'date_connected', CASE WHEN states[s] IN ('connected', 'hangup', 'recording', 'transcription', 'postcall') THEN connected END,
                'date_ended', CASE WHEN states[s] IN ('hangup', 'recording', 'transcription', 'postcall', 'voicemail_uploaded', 'missed') THEN ended END,
                'event_timestamp', t0 + s * 1000 + CASE WHEN states[s] IN ('hangup') THEN 64000 WHEN states[s] IN ('recording', 'transcription', 'postcall', 'voicemail_uploaded') THEN 90000 ELSE 0 END,
                'duration', CASE WHEN states[s] IN ('hangup', 'recording', 'transcription', 'postcall') THEN 60886.0 + (i % 1000) * 0.125 END,
                'total_duration', 65000.5,
                'talk_time', CASE WHEN connected IS NOT NULL THEN 60500.25 END,
                'hold_time', 0,
                'contact', pg_temp.dialpad_party('contact', cid),
                'target', pg_temp.dialpad_party('user', i),
                'entry_point_target', jsonb_build_object('id', 700, 'type', 'department', 'name', 'Support'),
                'proxy_target', '{}'::jsonb,
                'master_call_id', cid - (cid % 2),
                'entry_point_call_id', cid - (cid % 2),
                'operator_call_id', NULL,
                'group_id', 'group-' || (i % 50),
                'is_transferred', false,
                'is_internal', false,
                'routing_breadcrumbs', CASE WHEN heavy AND i % 2 = 0 THEN breadcrumbs ELSE '[]'::jsonb END,
                'was_recorded', states[s] = 'recording',
                'recording_details', CASE WHEN states[s] = 'recording' THEN jsonb_build_array(jsonb_build_object(
                    'id', 'rec-' || cid, 'url', 'https://dialpad.example/recording/' || cid,
                    'duration', 60.5, 'recording_type', 'callrecording', 'start_time', connected)) ELSE '[]'::jsonb END,
                'call_recording_ids', '[]'::jsonb,
                'voicemail_link', CASE WHEN states[s] IN ('voicemail', 'voicemail_uploaded') THEN 'https://dialpad.example/vm/' || cid END,
                'voicemail_recording_id', NULL,
                'transcription_text', CASE WHEN states[s] IN ('transcription', 'voicemail_uploaded') THEN transcript END,
                'labels', jsonb_build_array('support', 'tier' || (i % 3)),
                'csat_score', NULL,
                'mos_score', 4.3,
                'integrations', CASE WHEN heavy AND i % 5 < 2 THEN big_integrations ELSE '{}'::jsonb END,
                'callback_requested', false,
                'target_availability_status', 'open',
                'public_call_review_share_link', 'https://dialpad.example/shared/' || cid,
                'company_call_review_share_link', 'https://dialpad.example/company/' || cid);
            IF heavy AND states[s] = 'voicemail_uploaded' AND i % 7 = 0 THEN
                ev := ev || jsonb_build_object('audio_data', 'data:audio/wav;base64,' || repeat('UklGRiQAAABXQVZFZm10', 500));
            END IF;
            call_id := cid; kind := k; seq := s; payload := jsonb_strip_nulls(ev);
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

-- The status each kind of call must end in.
CREATE OR REPLACE FUNCTION pg_temp.dialpad_expected_status(kind text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind WHEN 'answered_inbound' THEN 'ended' WHEN 'missed_inbound' THEN 'missed'
                     WHEN 'voicemail' THEN 'voicemail' WHEN 'outbound_answered' THEN 'ended' END
$$;
