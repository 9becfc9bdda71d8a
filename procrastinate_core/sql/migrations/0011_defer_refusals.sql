-- 0011: a defer refused by the database (a queueing lock already held by a
-- waiting job) no longer raises inside the caller's transaction. Written so
-- that running it again is harmless.
--
-- Before, job_defer_many raised a unique violation: inside a caller's
-- transaction (`connection=`, SQLAlchemy, Django's atomic()) that aborted it,
-- unless the connector wrapped every query in a savepoint (two round trips
-- each). Now the insert runs in pcq_defer_jobs: a batch that carries no
-- queueing lock is inserted as before; one that does is inserted inside a
-- plpgsql exception block (a subtransaction that never leaves the server),
-- and a conflict comes back as one row (id NULL, conflict = the server's
-- detail) with nothing inserted, which the client turns into AlreadyEnqueued.
--
-- pcq_insert_jobs is the insert itself, written once for both branches.

CREATE OR REPLACE FUNCTION pcq_insert_jobs(jobs jsonb) RETURNS SETOF bigint
LANGUAGE sql AS $$
    -- A job's schedule_in_seconds is added to the database's now(): one clock.
    -- trace_context (0010): the deferring code's W3C trace context, or null.
    INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at,
                          trace_context)
    SELECT j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock, j.args,
           coalesce(j.scheduled_at, now() + make_interval(secs => j.schedule_in_seconds)),
           j.trace_context
    FROM ROWS FROM (
        jsonb_to_recordset(jobs) AS (
            queue_name text, task_name text, priority integer, lock text, queueing_lock text,
            args jsonb, scheduled_at timestamptz, schedule_in_seconds float8, trace_context jsonb
        )
    ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                           scheduled_at, schedule_in_seconds, trace_context, ord)
    ORDER BY j.ord
    RETURNING id;
$$;

CREATE OR REPLACE FUNCTION pcq_defer_jobs(jobs jsonb)
RETURNS TABLE (id bigint, conflict text)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    failed_constraint text;
    detail text;
BEGIN
    IF NOT jsonb_path_exists(jobs, '$[*] ? (@.queueing_lock != null)') THEN
        RETURN QUERY SELECT i, NULL::text FROM pcq_insert_jobs(jobs) AS i;
        RETURN;
    END IF;
    BEGIN
        SELECT array_agg(i) INTO ids FROM pcq_insert_jobs(jobs) AS i;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS failed_constraint = CONSTRAINT_NAME, detail = PG_EXCEPTION_DETAIL;
        IF failed_constraint IS DISTINCT FROM 'pcq_jobs_queueing_lock_uniq' THEN
            RAISE;
        END IF;
        RETURN QUERY SELECT NULL::bigint, coalesce(detail, 'queueing lock already held');
        RETURN;
    END;
    RETURN QUERY SELECT u, NULL::text FROM unnest(ids) AS u;
END;
$$;

-- The flow-control path (job_defer_flow_many) reports unique conflicts as rows
-- already; a held queueing lock raised inside pcq_defer_flow. The same guard
-- around it: every item comes back with outcome 'queueing_lock' and nothing of
-- the batch is inserted.
CREATE OR REPLACE FUNCTION pcq_defer_flow_guarded(jobs jsonb, all_or_nothing boolean)
RETURNS TABLE (ord bigint, id bigint, outcome text, conflict_id bigint, conflict text)
LANGUAGE plpgsql AS $$
DECLARE
    rows_json jsonb;
    failed_constraint text;
    detail text;
BEGIN
    IF NOT jsonb_path_exists(jobs, '$[*] ? (@.queueing_lock != null)') THEN
        RETURN QUERY SELECT f.ord, f.id, f.outcome, f.conflict_id, NULL::text
                     FROM pcq_defer_flow(jobs, all_or_nothing) AS f;
        RETURN;
    END IF;
    BEGIN
        SELECT coalesce(jsonb_agg(to_jsonb(f)), '[]'::jsonb) INTO rows_json
        FROM pcq_defer_flow(jobs, all_or_nothing) AS f;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS failed_constraint = CONSTRAINT_NAME, detail = PG_EXCEPTION_DETAIL;
        IF failed_constraint IS DISTINCT FROM 'pcq_jobs_queueing_lock_uniq' THEN
            RAISE;
        END IF;
        RETURN QUERY SELECT n, NULL::bigint, 'queueing_lock'::text, NULL::bigint,
                            coalesce(detail, 'queueing lock already held')
                     FROM generate_series(1, jsonb_array_length(jobs)::bigint) AS n;
        RETURN;
    END;
    RETURN QUERY SELECT (r->>'ord')::bigint, (r->>'id')::bigint, r->>'outcome',
                        (r->>'conflict_id')::bigint, NULL::text
                 FROM jsonb_array_elements(rows_json) AS r;
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (11, 'defer_refusals');
