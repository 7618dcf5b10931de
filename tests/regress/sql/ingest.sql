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
-- With a secret: plain JSON refused, alg none refused, a bad signature refused
SET dialpad.webhook_secret = 's3cret';
SELECT dialpad.ingest_webhook('{"call_id": 2}');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjYWxsX2lkIjoxfQ.');
\echo :LAST_ERROR_SQLSTATE
SELECT dialpad.ingest_webhook('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYWxsX2lkIjoxfQ.c2ln');
\echo :LAST_ERROR_SQLSTATE
RESET dialpad.webhook_secret;
SET dialpad.max_body_size = 10;
SELECT dialpad.ingest_webhook('{"call_id": 3, "state": "ringing"}');
\echo :LAST_ERROR_SQLSTATE
RESET dialpad.max_body_size;
SET dialpad.max_event_age = '10min';
SELECT dialpad.ingest_webhook('{"call_id": 4, "state": "ringing", "event_timestamp": 1000}');
\echo :LAST_ERROR_SQLSTATE
RESET dialpad.max_event_age;
-- nothing was stored by the refused deliveries
SELECT count(*) FROM dialpad.webhook_events;
