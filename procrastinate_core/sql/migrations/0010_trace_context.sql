-- 0010: trace context. A job keeps the W3C trace context (traceparent, and
-- tracestate when there is one) of the code that deferred it, so that a worker's
-- span for each run can be linked to the deferring span (procrastinate_core/otel.py).
-- NULL unless tracing is on (off by default); the client never sends more than
-- otel.MAX_TRACE_CONTEXT_BYTES (1 KiB). Running this again is harmless.

ALTER TABLE pcq_jobs ADD COLUMN IF NOT EXISTS trace_context jsonb;

-- pcq_defer_flow (migration 0008), replaced whole. The only change is the
-- trace_context column, read from each item and inserted by both paths (the
-- set-based insert and the per-item loop): every changed line ends in
-- "-- 0010"; everything else is 0008's text unchanged.
CREATE OR REPLACE FUNCTION pcq_defer_flow(jobs jsonb, all_or_nothing boolean)
RETURNS TABLE (ord bigint, id bigint, outcome text, conflict_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    one_key text;
    item record;
    found_id bigint;
    found_status text;
    new_id bigint;
    ords bigint[] := '{}';
    ids bigint[] := '{}';
    outcomes text[] := '{}';
    conflicts bigint[] := '{}';
    any_conflict boolean := false;
BEGIN
    -- One clock: a schedule_in is added to the database's now(), as in job_defer_many.
    jobs := (
        SELECT coalesce(jsonb_agg(
                   CASE WHEN e.value->>'scheduled_at' IS NULL AND e.value->>'schedule_in_seconds' IS NOT NULL
                        THEN e.value || jsonb_build_object('scheduled_at',
                             now() + make_interval(secs => (e.value->>'schedule_in_seconds')::float8))
                        ELSE e.value END
                   ORDER BY e.ordinality), '[]'::jsonb)
        FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e
    );
    -- Without unique keys: one set-based insert (one trigger run for the batch);
    -- ids grow in array order, as in job_defer_many.
    IF NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(jobs) AS e WHERE e.value->>'unique_key' IS NOT NULL
    ) THEN
        RETURN QUERY
        WITH inserted AS (
            INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, queueing_lock, args,
                                  scheduled_at, concurrency_key, concurrency_limit,
                                  trace_context)  -- 0010
            SELECT j.queue_name, j.task_name, coalesce(j.priority, 0), j.lock, j.queueing_lock,
                   coalesce(j.args, '{}'::jsonb), j.scheduled_at, j.concurrency_key, j.concurrency_limit,
                   j.trace_context  -- 0010
            FROM ROWS FROM (
                jsonb_to_recordset(jobs) AS (
                    queue_name text, task_name text, priority integer, lock text, queueing_lock text,
                    args jsonb, scheduled_at timestamptz, concurrency_key text, concurrency_limit integer,
                    trace_context jsonb  -- 0010
                )
            ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                                   scheduled_at, concurrency_key, concurrency_limit,
                                   trace_context,  -- 0010
                                   j_ord)
            ORDER BY j.j_ord
            RETURNING pcq_jobs.id AS new_job_id
        )
        SELECT row_number() OVER (ORDER BY i.new_job_id), i.new_job_id, 'inserted'::text, NULL::bigint
        FROM inserted AS i;
        RETURN;
    END IF;
    FOR one_key IN
        SELECT DISTINCT e.value->>'unique_key' AS k
        FROM jsonb_array_elements(jobs) AS e
        WHERE e.value->>'unique_key' IS NOT NULL
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(5278, hashtext(one_key));
    END LOOP;
    BEGIN
        FOR item IN
            SELECT *
            FROM ROWS FROM (
                jsonb_to_recordset(jobs) AS (
                    queue_name text, task_name text, priority integer, lock text, queueing_lock text,
                    args jsonb, scheduled_at timestamptz, concurrency_key text, concurrency_limit integer,
                    unique_key text, unique_states text[], unique_seconds float8, on_conflict text,
                    trace_context jsonb  -- 0010
                )
            ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                                   scheduled_at, concurrency_key, concurrency_limit, unique_key,
                                   unique_states, unique_seconds, on_conflict,
                                   trace_context,  -- 0010
                                   j_ord)
            ORDER BY j_ord
        LOOP
            found_id := NULL;
            found_status := NULL;
            IF item.unique_key IS NOT NULL THEN
                -- a running or finished conflict first: replace cannot replace those
                SELECT c.id, c.status INTO found_id, found_status
                FROM pcq_jobs AS c
                WHERE c.unique_key = item.unique_key
                  AND c.status = ANY (item.unique_states)
                  AND (c.status IN ('todo', 'doing') OR item.unique_seconds IS NULL
                       OR c.finished_at >= now() - make_interval(secs => item.unique_seconds))
                ORDER BY (c.status = 'todo'), c.id
                LIMIT 1;
            END IF;
            IF found_id IS NOT NULL AND item.on_conflict = 'ignore' THEN
                ords := ords || item.j_ord; ids := ids || found_id;
                outcomes := outcomes || 'ignored'::text; conflicts := conflicts || found_id;
                CONTINUE;
            END IF;
            IF found_id IS NOT NULL AND (item.on_conflict <> 'replace' OR found_status <> 'todo') THEN
                any_conflict := true;
                ords := ords || item.j_ord; ids := ids || NULL::bigint;
                outcomes := outcomes || 'conflict'::text; conflicts := conflicts || found_id;
                IF all_or_nothing THEN
                    RAISE EXCEPTION 'unique conflict' USING ERRCODE = 'PCQU1';
                END IF;
                CONTINUE;
            END IF;
            IF found_id IS NOT NULL THEN
                UPDATE pcq_jobs AS c SET status = 'cancelled', finished_at = now()
                WHERE c.unique_key = item.unique_key AND c.status = 'todo'
                  AND 'todo' = ANY (item.unique_states);
            END IF;
            INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, queueing_lock, args,
                                  scheduled_at, concurrency_key, concurrency_limit, unique_key,
                                  trace_context)  -- 0010
            VALUES (item.queue_name, item.task_name, coalesce(item.priority, 0), item.lock,
                    item.queueing_lock, coalesce(item.args, '{}'::jsonb), item.scheduled_at,
                    item.concurrency_key, item.concurrency_limit, item.unique_key,
                    item.trace_context)  -- 0010
            RETURNING pcq_jobs.id INTO new_id;
            ords := ords || item.j_ord; ids := ids || new_id;
            outcomes := outcomes || CASE WHEN found_id IS NULL THEN 'inserted' ELSE 'replaced' END;
            conflicts := conflicts || found_id;
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'PCQU1' THEN
        -- everything this call inserted or cancelled is rolled back (a
        -- savepoint inside the function: the caller's transaction goes on)
        NULL;
    END;
    IF any_conflict AND all_or_nothing THEN
        -- the loop stopped at the first conflict, the last item it recorded
        RETURN QUERY
        SELECT e.n, NULL::bigint,
               CASE WHEN e.n = ords[cardinality(ords)] THEN 'conflict' ELSE 'skipped' END,
               CASE WHEN e.n = ords[cardinality(ords)] THEN conflicts[cardinality(conflicts)] END
        FROM generate_series(1, jsonb_array_length(jobs)::bigint) AS e(n);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM unnest(ords, ids, outcomes, conflicts);
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (10, 'trace_context');
