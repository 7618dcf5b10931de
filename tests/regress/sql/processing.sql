-- dialpad.process_events and what it leaves for a DBA to read: calls, dead letters,
-- rejected transitions, queue statistics. The workers are off (dialpad.workers = 0).
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
RESET client_min_messages;

INSERT INTO dialpad.webhook_events (payload) VALUES
  ('{"call_id": 10, "state": "ringing", "direction": "incoming", "event_timestamp": 1, "date_started": 1787158716092}'),
  ('{"call_id": 10, "state": "connected", "event_timestamp": 2, "date_connected": 1787158720114}'),
  ('{"call_id": 10, "state": "hangup", "event_timestamp": 3, "date_connected": 1787158720114, "date_ended": 1787158781000, "duration": 60886.5}'),
  ('{"call_id": 11, "state": "ringing", "direction": "inbound", "event_timestamp": 1}'),
  ('{"call_id": 11, "state": "voicemail", "event_timestamp": 2, "voicemail_link": "https://vm/11"}'),
  ('{"call_id": 11, "state": "hangup", "event_timestamp": 3}'),
  ('{"call_id": 12, "state": "calling", "direction": "out", "event_timestamp": 1}'),
  ('{"call_id": 12, "state": "hangup", "event_timestamp": 2}'),
  ('{"call_id": 13, "state": "blocked", "direction": "inbound", "event_timestamp": 1}'),
  ('{"call_id": 13, "state": "hangup", "event_timestamp": 2}'),
  ('{"state": "ringing"}'),
  ('"junk"'),
  ('{"call_id": 14, "state": "hangup", "duration": -5}'),
  ('{"call_id": 15, "state": 3}'),
  ('{"call_id": 16, "date_started": 1787158716092, "date_ended": 1787158700000}');
SELECT dialpad.process_events();
SELECT dialpad_call_id, direction, status, last_state, connected_at IS NOT NULL AS answered,
       duration_seconds, voicemail_link
  FROM dialpad.calls ORDER BY 1;
SELECT count(*) AS rejected_transitions FROM dialpad.rejected_transitions;
SELECT call_id, attempts, last_error FROM dialpad.dead_events ORDER BY id;
SELECT pending, due, retrying, dead FROM dialpad.queue_stats;

-- A late voicemail_uploaded after a hangup: the hangup's "missed" was a default, refined.
INSERT INTO dialpad.webhook_events (payload) VALUES
  ('{"call_id": 20, "state": "hangup", "direction": "inbound", "event_timestamp": 3}');
SELECT dialpad.process_events();
INSERT INTO dialpad.webhook_events (payload) VALUES
  ('{"call_id": 20, "state": "voicemail_uploaded", "event_timestamp": 4}');
SELECT dialpad.process_events();
SELECT status FROM dialpad.calls WHERE dialpad_call_id = 20;
-- An explicit terminal status is final: the refused move is recorded with its event.
INSERT INTO dialpad.webhook_events (payload) VALUES
  ('{"call_id": 20, "state": "connected", "event_timestamp": 5, "date_connected": 5}');
SELECT dialpad.process_events();
SELECT dialpad_call_id, event_id IS NOT NULL AS from_event, from_status, to_status, reason FROM dialpad.rejected_transitions;

-- Re-driving a dead letter
SELECT dialpad.retry_event((SELECT min(id) FROM dialpad.dead_events));
SELECT dialpad.retry_event(-1);
SELECT dialpad.retry_dead_events();
SELECT pending, due, dead FROM dialpad.queue_stats;
SELECT dialpad.process_events();
SELECT dead FROM dialpad.queue_stats;

-- Triage (docs/troubleshooting.md, "Dead events"): dead events grouped by reason, retried
-- and discarded by filter, one discarded with a reason.
INSERT INTO dialpad.webhook_events (payload, source) VALUES
  ('{"state": "hangup"}', 'acme'),
  ('{"call_id": 30, "state": "hangup", "duration": "long"}', 'acme'),
  ('{"call_id": 31, "state": "hangup", "duration": "short"}', 'globex');
SELECT dialpad.process_events();
SELECT reason, source, events, example_error FROM dialpad.dead_event_reasons ORDER BY reason, source;
SELECT dialpad.retry_dead_events(source => 'acme', dead_reason => 'field duration is unreadable');
SELECT pending, dead FROM dialpad.queue_stats;
SELECT dialpad.process_events();
SELECT dialpad.retry_dead_events(received_after => now() + interval '1 hour');
SELECT dialpad.retry_dead_events(error_like => 'field duration:%', received_before => now() + interval '1 hour');
SELECT dialpad.process_events();
SELECT dialpad.discard_event((SELECT min(id) FROM dialpad.dead_events WHERE source = 'acme' AND reason = 'payload has no call_id'), 'a test request');
SELECT dialpad.discard_event(-1, 'nothing to discard');
SELECT dialpad.discard_event((SELECT min(id) FROM dialpad.dead_events), ' ');
SELECT dialpad.discard_dead_events('not call events', error_like => 'payload is not%');
SELECT dialpad.discard_dead_events(NULL, source => 'acme');
SELECT reason, source, events FROM dialpad.dead_event_reasons ORDER BY reason, source;
SELECT dead FROM dialpad.queue_stats;
SELECT source, discard_reason, dead_at IS NOT NULL AS was_dead, processed_at IS NULL AS unprocessed
  FROM dialpad.webhook_events WHERE discarded_at IS NOT NULL ORDER BY id;
-- A discarded event is not re-driven with the dead ones; retry_event takes it back.
SELECT dialpad.retry_dead_events(dead_reason => 'payload is not a JSON object');
SELECT dialpad.retry_event((SELECT min(id) FROM dialpad.webhook_events WHERE discarded_at IS NOT NULL));
SELECT pending, dead FROM dialpad.queue_stats;
SELECT count(*) AS discarded FROM dialpad.webhook_events WHERE discarded_at IS NOT NULL;
