-- The pure functions users call: results, WARNING texts, errors with their SQLSTATE.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
RESET client_min_messages;

SELECT dialpad.version_info() LIKE 'pg_dialpad ' || (SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad') || ' (pgrx 0.18.1, built for PostgreSQL %)' AS version_ok;

-- normalize_call_direction
SELECT d, dialpad.normalize_call_direction(d)
  FROM unnest(ARRAY['inbound', 'Incoming', ' IN ', 'outbound', 'OUTGOING', 'out']) d;
SELECT dialpad.normalize_call_direction('sideways');
SELECT dialpad.normalize_call_direction('');
SELECT dialpad.normalize_call_direction(NULL) IS NULL AS null_in_null_out;

-- is_valid_status_transition / status_transition_error
SELECT f, t, dialpad.is_valid_status_transition(f, t) AS valid, dialpad.status_transition_error(f, t) AS error
  FROM (VALUES ('ringing', 'active'), ('active', 'ended'), ('active', 'active'), ('ended', 'active'),
               ('missed', 'voicemail'), ('active', 'ringing'), (NULL, 'ended'), ('ringing', NULL),
               ('ringing', 'bogus'), ('bogus', 'ended')) v(f, t);

-- sanitize_call_payload: the seed's example, the bound, and bad limits
SELECT dialpad.sanitize_call_payload(jsonb_build_object(
    'call', jsonb_build_object('id', 123),
    'transcript', repeat('x', 600),
    'audio_data', 'AAAA',
    'items', (SELECT jsonb_agg(g) FROM generate_series(1, 12) g),
    'metadata', (SELECT jsonb_object_agg('key' || lpad(g::text, 2, '0'), g) FROM generate_series(1, 25) g)));
SELECT dialpad.sanitize_call_payload('{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}');
SELECT dialpad.sanitize_call_payload(jsonb_build_object(repeat('k', 300), 1));
SELECT p->'call_id' AS call_id, p->'_truncated' AS truncated, p->'total_keys' AS total_keys,
       jsonb_array_length(p->'omitted_keys') AS omitted_sample, pg_column_size(p) <= 2048 AS bounded
  FROM (SELECT dialpad.sanitize_call_payload(
                 jsonb_object_agg('key_' || lpad(g::text, 4, '0'), repeat('v', 50)) || '{"call_id": 7}',
                 max_bytes => 2048) AS p
          FROM generate_series(1, 200) g) s;
SELECT dialpad.sanitize_call_payload('{}', max_array_items => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.sanitize_call_payload('{}', max_bytes => 100);
\echo :LAST_ERROR_SQLSTATE

SELECT dialpad.process_events(-1);
\echo :LAST_ERROR_SQLSTATE
