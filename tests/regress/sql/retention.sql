-- Partitions and retention (sql/maintenance.sql): the grid, the partitions made ahead, rows
-- no partition covers, retention keeping unprocessed events, the settings and the errors.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
RESET client_min_messages;
SET TimeZone = 'UTC';

-- the grid: days from midnight UTC, weeks from Mondays
SELECT dialpad.partition_start('2026-11-22 13:45:00+00', '1 day') AS day,
       dialpad.partition_start('2026-11-22 13:45:00+00', '7 days') AS week,
       dialpad.partition_start('2026-11-22 13:45:00+00', '6 hours') AS six_hours;

-- a fresh install has only the DEFAULT partitions
SELECT parent, partition, is_default, range_from, range_to FROM dialpad.partitions ORDER BY 1, 2;

-- the first run makes today's partition and three ahead, for both tables; a second has
-- nothing to do
SELECT action, count(*) AS partitions, sum(rows) AS rows_moved FROM dialpad.run_maintenance() GROUP BY 1;
SELECT parent, count(*) FILTER (WHERE NOT is_default) AS ranges,
       bool_and(range_to - range_from = interval '1 day') FILTER (WHERE NOT is_default) AS daily,
       bool_or(now() >= range_from AND now() < range_to) AS covers_now
  FROM dialpad.partitions GROUP BY 1 ORDER BY 1;
SELECT count(*) AS second_run FROM dialpad.run_maintenance();

-- an event of 2020: stored in the DEFAULT partition, then moved into a partition of its
-- own, which gets the DEFAULT partition's indexes
INSERT INTO dialpad.webhook_events (payload, received_at)
VALUES ('{"call_id": 1, "state": "ringing", "event_timestamp": 1582977600000}', '2020-02-29 12:00+00');
SELECT tableoid::regclass AS stored_in FROM dialpad.webhook_events WHERE call_id = 1;
SELECT action, partition, range_from, range_to, rows FROM dialpad.run_maintenance();
SELECT tableoid::regclass AS stored_in FROM dialpad.webhook_events WHERE call_id = 1;
SELECT c.relname AS index, i.indisprimary AS primary_key FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'dialpad.webhook_events_p20200229'::regclass ORDER BY 1;

-- retention: the 2020 event is pending, yet its partition is dropped whole: the event moves
-- first, unchanged, to the holding partition, which covers everything before the oldest
-- time partition, and is claimed from there
SET dialpad.retention = '30d';
SELECT action, partition, rows FROM dialpad.run_maintenance();
SELECT partition, range_from, range_to FROM dialpad.partitions WHERE range_from = '-infinity';
SELECT tableoid::regclass AS stored_in, processed_at IS NULL AS pending FROM dialpad.webhook_events WHERE call_id = 1;
SELECT dialpad.process_events();
SELECT count(*) AS events, (SELECT status FROM dialpad.calls WHERE dialpad_call_id = 1) AS call_status
  FROM dialpad.webhook_events WHERE call_id = 1 AND processed_at IS NOT NULL;
RESET dialpad.retention;

-- the settings
SHOW dialpad.retention;
SHOW dialpad.retention_mode;
SHOW dialpad.partition_interval;
SHOW dialpad.partitions_ahead;
SHOW dialpad.maintenance_interval;
SET dialpad.retention = '2 weeks';
SET dialpad.retention_mode = archive;
SET dialpad.partition_interval = 0;
SET dialpad.retention = '90d';
SHOW dialpad.retention;
RESET dialpad.retention;

-- errors
SELECT dialpad.add_partition('dialpad.calls', now(), '1 day');
SET ROLE dialpad_reader;
SELECT count(*) FROM dialpad.run_maintenance();
SELECT count(*) >= 2 AS sees_partitions FROM dialpad.partitions;
RESET ROLE;
SET ROLE dialpad_admin;
SELECT count(*) AS admin_runs FROM dialpad.run_maintenance();
RESET ROLE;
