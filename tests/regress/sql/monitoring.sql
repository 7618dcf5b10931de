-- What dialpad.worker_status() says when no worker runs (dialpad.workers = 0 here), and
-- the shape of the monitoring views.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_dialpad CASCADE;
CREATE EXTENSION pg_dialpad;
RESET client_min_messages;

SELECT component, pid, running, detail, hint FROM dialpad.worker_status();
SELECT pending, due, retrying, dead, oldest_pending_age, processed_last_minute IS NOT NULL AS counting FROM dialpad.queue_stats;
SELECT count(*) AS worker_rows FROM dialpad.worker_stats;
SELECT accepted >= 0 AS counted FROM dialpad.ingest_stats;
SELECT source, payloads FROM dialpad.payload_stats ORDER BY 1;
-- every function and view has a comment; every function pins search_path
SELECT count(*) AS functions_without_comment FROM pg_proc p
 WHERE p.pronamespace = 'dialpad'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT count(*) AS functions_without_search_path FROM pg_proc p
 WHERE p.pronamespace = 'dialpad'::regnamespace
   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false);
SELECT count(*) AS relations_without_comment FROM pg_class c
 WHERE c.relnamespace = 'dialpad'::regnamespace AND c.relkind IN ('r', 'p', 'v') AND obj_description(c.oid, 'pg_class') IS NULL;
