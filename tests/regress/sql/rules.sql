-- Rules as data: the triggers on dialpad.calls and on the rule tables, as every writer sees
-- them (messages, DETAIL, HINT, SQLSTATE).
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
RESET client_min_messages;

-- Direction is stored normalized; an unknown spelling is stored as NULL with a WARNING.
INSERT INTO dialpad.calls (dialpad_call_id, status, direction) VALUES (1, 'ringing', 'Incoming');
INSERT INTO dialpad.calls (dialpad_call_id, status, direction) VALUES (2, 'ringing', 'sideways');
SELECT dialpad_call_id, direction FROM dialpad.calls ORDER BY 1;

-- Invalid transitions: skipped with a WARNING and recorded (the default) ...
UPDATE dialpad.calls SET status = 'ended' WHERE dialpad_call_id = 1;
UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id = 1;
SELECT status FROM dialpad.calls WHERE dialpad_call_id = 1;
SELECT dialpad_call_id, from_status, to_status, reason FROM dialpad.rejected_transitions;
-- ... or refused with check_violation.
SET dialpad.invalid_transition = error;
UPDATE dialpad.calls SET status = 'missed' WHERE dialpad_call_id = 1;
\echo :LAST_ERROR_SQLSTATE
RESET dialpad.invalid_transition;
INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (3, 'bogus');
\echo :LAST_ERROR_SQLSTATE

-- A rule that could never take effect is refused, with a hint that works.
INSERT INTO dialpad.status_transitions VALUES ('ended', 'active');
\echo :LAST_ERROR_SQLSTATE
UPDATE dialpad.call_statuses SET is_terminal = true WHERE status = 'active';
\echo :LAST_ERROR_SQLSTATE
UPDATE dialpad.call_statuses SET is_terminal = false WHERE status = 'ended';
INSERT INTO dialpad.status_transitions VALUES ('ended', 'active');
SELECT dialpad.is_valid_status_transition('ended', 'active');

-- Deleted rules are remembered (for dump and restore); inserting one again forgets it.
DELETE FROM dialpad.state_mapping WHERE state IN ('csat', 'pcsat');
SELECT rule_table, rule_key FROM dialpad.deleted_rules ORDER BY 1, 2;
INSERT INTO dialpad.state_mapping (state) VALUES ('csat');
SELECT rule_table, rule_key FROM dialpad.deleted_rules ORDER BY 1, 2;
-- An INSERT of an existing rule key updates it (what a restore does).
INSERT INTO dialpad.call_statuses VALUES ('missed', true, 'edited');
SELECT status, is_terminal, description FROM dialpad.call_statuses WHERE status = 'missed';

-- The inbox is an audit log.
INSERT INTO dialpad.webhook_events (payload) VALUES ('{"call_id": 9, "state": "ringing", "event_timestamp": 1}');
UPDATE dialpad.webhook_events SET payload = '{}';
\echo :LAST_ERROR_SQLSTATE
SELECT event_type, call_id, dedupe_key, duplicate_of FROM dialpad.webhook_events;
