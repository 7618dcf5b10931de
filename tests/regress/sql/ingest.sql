-- dialpad.ingest_webhook: what a web tier sees for each kind of body.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
RESET client_min_messages;

SELECT dialpad.ingest_webhook('{"call_id": 1, "state": "ringing", "event_timestamp": 1787158716000}') AS first;
-- A redelivery is kept, marked, and answered with the first delivery's id.
SELECT dialpad.ingest_webhook('{"event_timestamp": 1787158716000.0, "state": "ringing", "call_id": "1"}') AS again;
SELECT id, dedupe_key, duplicate_of, processed_at IS NOT NULL AS handled FROM dialpad.webhook_events ORDER BY id;

SELECT dialpad.ingest_webhook('');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('{"call_id": ');
\echo :LAST_ERROR_SQLSTATE
-- A JWT while no secret is configured
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjoxfQ.c2ln');
\echo :LAST_ERROR_SQLSTATE
-- A webhook source (its secret passed as a bind parameter in real use): plain JSON refused,
-- alg none refused, a bad signature refused, each with its reason in the DETAIL.
SELECT dialpad.add_source('acme', 's3cret', '{"company": "Acme"}');
SELECT name, enabled, labels, previous_secret_valid_until FROM dialpad.source_list;
SELECT dialpad.ingest_webhook('{"call_id": 2}');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjYWxsX2lkIjoxfQ.');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogN30.VsZrrLPy-pqholDWMF8TqVShGHnhRA7OWFe9S8PvDwE');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogOCwgImV4cCI6IDEwMDAwMDAwMDB9.SlZX5TUC4kWyPfReXZMwVON-TPrIi8DoVDY0WOMG7xI');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogOSwgIm5iZiI6IDQxMDI0NDQ4MDB9.KRE364CSHnOpMgJ6Y92t-08vAp-gnE7cZgIr0uJmVzE');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImNyaXQiOlsiYjY0Il0sImI2NCI6ZmFsc2V9.eyJjYWxsX2lkIjogMTB9.D3Nw3inEtLf42h82SNPATMiddBXhyObquDW5FT3uKRE');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogNSwgInN0YXRlIjogInJpbmdpbmciLCAiZXZlbnRfdGltZXN0YW1wIjogMTc4NzE1ODcxNjAwMH0.1RPsBeLTIbgbSLzfMJjYWrOqrRP5y6JMHpypN-CW2Rw', 'initech');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogNSwgInN0YXRlIjogInJpbmdpbmciLCAiZXZlbnRfdGltZXN0YW1wIjogMTc4NzE1ODcxNjAwMH0.1RPsBeLTIbgbSLzfMJjYWrOqrRP5y6JMHpypN-CW2Rw') > 0 AS signed_and_stored;
SELECT source, payload->>'call_id' AS call_id FROM dialpad.webhook_events WHERE source IS NOT NULL;
-- Two sources: a delivery names its source.
SELECT dialpad.add_source('globex', 'globex-secret');
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogNiwgInN0YXRlIjogInJpbmdpbmciLCAiZXZlbnRfdGltZXN0YW1wIjogMTc4NzE1ODcxNjAwMH0.2nbhPE-VL75kUAA6IcHAhgfSDQBahgNYtcwGGL0xo8Y');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogNiwgInN0YXRlIjogInJpbmdpbmciLCAiZXZlbnRfdGltZXN0YW1wIjogMTc4NzE1ODcxNjAwMH0.2nbhPE-VL75kUAA6IcHAhgfSDQBahgNYtcwGGL0xo8Y', 'globex') > 0 AS signed_and_stored;
SELECT dialpad.disable_source('globex');
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjogNiwgInN0YXRlIjogInJpbmdpbmciLCAiZXZlbnRfdGltZXN0YW1wIjogMTc4NzE1ODcxNjAwMH0.2nbhPE-VL75kUAA6IcHAhgfSDQBahgNYtcwGGL0xo8Y', 'globex');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.add_source('globex', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.add_source('no spaces', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.rotate_secret('initech', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.rotate_secret('acme', 'x', interval '-1 second');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.drop_source('acme'), dialpad.drop_source('globex');
SET dialpad.max_body_size = 10;
SELECT dialpad.ingest_webhook('{"call_id": 3, "state": "ringing"}');
\echo :LAST_ERROR_SQLSTATE
RESET dialpad.max_body_size;
SET dialpad.max_event_age = '10min';
SELECT dialpad.ingest_webhook('{"call_id": 4, "state": "ringing", "event_timestamp": 1000}');
\echo :LAST_ERROR_SQLSTATE
RESET dialpad.max_event_age;
-- nothing was stored by the refused deliveries (2 + the 2 signed ones)
SELECT count(*) FROM dialpad.webhook_events;
