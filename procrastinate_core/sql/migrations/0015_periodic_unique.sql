-- 0015: periodic ticks of tasks with a unique key.
--
-- A tick is deferred once across workers by its row in pcq_periodic_defers
-- (primary key: task, periodic_id, tick), inserted first: the worker whose
-- insert wins defers the job, the others defer nothing. The query
-- periodic_defer does both in one statement with a plain INSERT; a task with a
-- unique key needs pcq_defer_flow's per-item decision (on_conflict), which is a
-- function call, hence this function: the tick's row first, then, only if this
-- call inserted it, the job through pcq_defer_flow_guarded (a held queueing
-- lock is an outcome there, not an error), then the tick's job_id set to the
-- job it deferred ('inserted' or 'replaced'; NULL when the key's holder kept
-- its place: 'ignored', 'conflict', 'queueing_lock').
--
-- Returns no row when the tick was already deferred, else one row: the
-- outcome of the job's defer as pcq_defer_flow reports it. A conflict never
-- raises (all_or_nothing is false and the periodic deferrer has no caller to
-- raise to): the tick is recorded and skipped.
CREATE OR REPLACE FUNCTION pcq_periodic_defer_flow(
    p_task_name text, p_periodic_id text, p_defer_timestamp bigint, p_jobs jsonb
)
RETURNS TABLE (id bigint, outcome text, conflict_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    result record;
BEGIN
    INSERT INTO pcq_periodic_defers (task_name, periodic_id, defer_timestamp)
    VALUES (p_task_name, coalesce(p_periodic_id, ''), p_defer_timestamp)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT f.id AS job_id, f.outcome AS job_outcome, f.conflict_id AS job_conflict INTO result
    FROM pcq_defer_flow_guarded(p_jobs, false) AS f
    ORDER BY f.ord
    LIMIT 1;
    IF result.job_outcome IN ('inserted', 'replaced') THEN
        UPDATE pcq_periodic_defers AS t SET job_id = result.job_id
        WHERE t.task_name = p_task_name AND t.periodic_id = coalesce(p_periodic_id, '')
          AND t.defer_timestamp = p_defer_timestamp;
    END IF;
    RETURN QUERY SELECT result.job_id, result.job_outcome, result.job_conflict;
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (15, 'periodic_unique');
