-- Re-deriving calls after a rule change (docs/operations.md, "Re-deriving calls after a rule
-- change"). Rules are rows; an edit applies to the events processed after it. A
-- re-derivation re-applies today's rules to chosen calls from their whole history in the
-- audit log: dialpad.rederive_calls() lists the calls (a job), the workers (or
-- dialpad.rederive_step() in a dialpad_worker session) work through the list in short
-- slices beside ingestion and processing; only the calls of a slice wait for it.

CREATE TABLE dialpad.rederive_jobs (
    id              bigserial PRIMARY KEY,
    requested_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    requested_by    name NOT NULL DEFAULT CURRENT_USER,
    received_from   timestamptz,
    received_until  timestamptz,
    source          text,
    call_ids        bigint[],
    calls           bigint NOT NULL,
    rederived       bigint NOT NULL DEFAULT 0,
    left_as_they_are bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    last_error      text,
    finished_at     timestamptz
);
COMMENT ON TABLE dialpad.rederive_jobs IS
    'One row per dialpad.rederive_calls() request: what it asked for, how many calls it listed, how many were re-derived, left as they are (their history is partly dropped by retention) or failed, and when it finished.';

CREATE TABLE dialpad.rederive_queue (
    job_id  bigint NOT NULL REFERENCES dialpad.rederive_jobs (id) ON DELETE CASCADE,
    call_id bigint NOT NULL,
    PRIMARY KEY (job_id, call_id)
);
COMMENT ON TABLE dialpad.rederive_queue IS
    'The calls of dialpad.rederive_jobs still to re-derive; a row goes when its call is done.';

CREATE FUNCTION dialpad.rederive_calls(since timestamptz, until timestamptz DEFAULT now(),
                                       source text DEFAULT NULL, call_ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job bigint;
    n bigint;
    distributed boolean := false;
BEGIN
    IF since IS NULL OR until IS NULL OR until < since THEN
        RAISE EXCEPTION 'a re-derivation needs a window of time received: since <= until, neither NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ''dialpad.calls''::regclass)'
           INTO distributed;
    END IF;
    IF distributed THEN
        RAISE EXCEPTION 're-deriving calls is not supported once the tables are distributed with Citus'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    INSERT INTO dialpad.rederive_jobs (received_from, received_until, source, call_ids, calls)
    VALUES (since, until, rederive_calls.source, rederive_calls.call_ids, 0)
    RETURNING id INTO job;
    -- The calls that have a row and an applied event received in the window.
    INSERT INTO dialpad.rederive_queue (job_id, call_id)
    SELECT DISTINCT job, e.call_id
      FROM dialpad.webhook_events e
     WHERE e.received_at >= since AND e.received_at < until
       AND e.processed_at IS NOT NULL AND e.duplicate_of IS NULL AND e.call_id IS NOT NULL
       AND (rederive_calls.source IS NULL OR e.source = rederive_calls.source)
       AND (rederive_calls.call_ids IS NULL OR e.call_id = ANY (rederive_calls.call_ids))
       AND EXISTS (SELECT FROM dialpad.calls c WHERE c.dialpad_call_id = e.call_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE dialpad.rederive_jobs SET calls = n, finished_at = CASE WHEN n = 0 THEN now() END WHERE id = job;
    PERFORM dialpad.wake_workers();
    RETURN job;
END
$$;
COMMENT ON FUNCTION dialpad.rederive_calls(timestamptz, timestamptz, text, bigint[]) IS
    'Lists for re-derivation the calls with an applied event received in [since, until) (and through source, and among call_ids, when given): the workers (or dialpad.rederive_step()) re-apply today''s rules to each from its whole history in the audit log, in slices, beside ingestion. Returns the job id; progress in dialpad.rederive_progress. Errors: 22023 bad window, 0A000 on distributed (Citus) tables.';

CREATE VIEW dialpad.rederive_progress WITH (security_invoker = true) AS
SELECT j.id AS job_id, j.requested_at, j.requested_by, j.received_from, j.received_until, j.source,
       j.calls, j.rederived, j.left_as_they_are, j.failed,
       (SELECT pg_catalog.count(*) FROM dialpad.rederive_queue q WHERE q.job_id OPERATOR(pg_catalog.=) j.id) AS waiting,
       j.finished_at, j.last_error
  FROM dialpad.rederive_jobs j;
COMMENT ON VIEW dialpad.rederive_progress IS
    'Each re-derivation job: calls listed, re-derived, left as they are (history partly dropped by retention), failed (last_error says why), still waiting, and when it finished.';

SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_jobs_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dialpad.rederive_queue', '');
