-- 0018: the update trigger runs only the steps its rows need. Written so
-- that running it again is harmless.
--
-- Every claim and every batch of outcomes is an UPDATE of pcq_jobs. 0008's
-- pcq_record_updated_jobs joined its transition tables once per step
-- (history events, abort events and their NOTIFY, the pause gate's queues
-- and tasks, locks, concurrency keys, the wake-up NOTIFY) whatever the rows
-- were: a claim of plain jobs ran ten joins to do one insert of events; and
-- 0012's pcq_jobs_rate_updated (0016's pcq_rate_after_update), a statement
-- trigger of its own that fired first, looked at both transition tables of
-- every UPDATE to find, most of the time, no rate-limited row. Here one join
-- says which steps have rows to work on (for locks, keys and rate keys:
-- whether any row has one at all), the rate step is this function's first
-- (the same order of work), and the steps without rows are skipped; each step
-- that runs is 0008's or 0016's, unchanged (lines marked `-- [0018]` are the
-- new ones). A step skipped had no row to act on, so it would have done
-- nothing: no event, no advisory lock (pcq_paused_among locks only the queues
-- and tasks it is given), no settling, no notification.

CREATE OR REPLACE FUNCTION pcq_record_updated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    any_paused boolean := false;
    facts record;  -- [0018]
BEGIN
    -- The pause gate's own update (ready -> 'pause', set by pcq.holding)
    -- changes nothing this function acts on: no event, lock, slot or wake-up.
    -- Skipping it matters: its transition tables are joined by nested loops
    -- (10,000 jobs deferred into a paused queue: 15 s with, 0.2 s without).
    IF current_setting('pcq.holding', true) = 'on' THEN
        RETURN NULL;
    END IF;
    -- [0018] one pass: which steps below have rows to work on (the lock and
    -- limit flags are supersets: any row with a lock or a key runs the step)
    SELECT coalesce(bool_or(n.status <> o.status), false) AS changed,
           coalesce(bool_or(n.abort_requested AND NOT o.abort_requested), false) AS aborts,
           coalesce(bool_or(n.status = 'todo' AND n.waiting_for IS NULL
                            AND NOT (o.status = 'todo' AND o.waiting_for IS NULL)), false) AS made_ready,
           coalesce(bool_or(n.lock IS NOT NULL OR o.lock IS NOT NULL), false) AS locks,
           coalesce(bool_or(n.concurrency_key IS NOT NULL OR o.concurrency_key IS NOT NULL), false) AS limits,
           coalesce(bool_or(n.rate_key IS NOT NULL OR o.rate_key IS NOT NULL), false) AS rates  -- [0018]
    INTO facts
    FROM new_jobs AS n JOIN old_jobs AS o USING (id);
    -- [0018] 0016's pcq_rate_after_update (a trigger of its own, which fired first):
    -- claims of rate-limited jobs record their start; jobs entering 'rate', and
    -- granted jobs leaving without a start, settle their keys.
    IF facts.rates THEN  -- [0018]
        INSERT INTO pcq_rate_starts (rate_key, started_at, expires_at, job_id)
        SELECT n.rate_key, n.started_at, n.started_at + make_interval(secs => n.rate_period), n.id
        FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.rate_key IS NOT NULL AND n.status = 'doing' AND o.status <> 'doing';
        PERFORM pcq_settle_rates(ARRAY(
            SELECT o.rate_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
            WHERE o.rate_key IS NOT NULL AND o.status = 'todo'
              AND coalesce(o.waiting_for, 'pause') IN ('pause', 'limit')  -- 0016
              AND NOT (n.status = 'doing'
                       OR (n.status = 'todo'
                           AND coalesce(n.waiting_for, 'pause') IN ('pause', 'limit')  -- 0016
                           AND n.rate_key IS NOT DISTINCT FROM o.rate_key))
            UNION
            SELECT n.rate_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
            WHERE n.status = 'todo' AND n.waiting_for = 'rate'
              AND NOT (o.status = 'todo' AND o.waiting_for = 'rate' AND o.rate_key IS NOT DISTINCT FROM n.rate_key)
        ), false);
    END IF;  -- [0018]
    IF facts.changed THEN  -- [0018]
    INSERT INTO pcq_events (job_id, type, attempt, worker_id)
    SELECT n.id,
           CASE
               WHEN n.status = 'doing' THEN 'started'
               -- Recovery of a stalled job forgets the dead worker; a retry
               -- keeps the worker that ran the failed attempt.
               WHEN n.status = 'todo' AND o.status = 'doing' AND n.worker_id IS NULL THEN 'recovered'
               WHEN n.status = 'todo' AND o.status = 'doing' THEN 'deferred_for_retry'
               WHEN n.status = 'todo' THEN 'retried'
               ELSE n.status
           END,
           n.attempts,
           -- the worker that started, ran, or (recovered) lost the attempt
           COALESCE(n.worker_id, o.worker_id)
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.status <> o.status;
    END IF;  -- [0018]

    IF facts.aborts THEN  -- [0018]
    INSERT INTO pcq_events (job_id, type, attempt, worker_id)
    SELECT n.id, 'abort_requested', n.attempts, n.worker_id
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.abort_requested AND NOT o.abort_requested;

    PERFORM pg_notify('pcq_abort', n.id::text)
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.abort_requested AND NOT o.abort_requested AND n.status = 'doing';
    END IF;  -- [0018]

    -- The pause gate for the jobs this statement made ready (a claim makes none).
    IF facts.made_ready THEN  -- [0018]
    any_paused := pcq_paused_among(
        ARRAY(SELECT DISTINCT n.queue_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
              WHERE n.status = 'todo' AND n.waiting_for IS NULL
                AND NOT (o.status = 'todo' AND o.waiting_for IS NULL)),
        ARRAY(SELECT DISTINCT n.task_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
              WHERE n.status = 'todo' AND n.waiting_for IS NULL
                AND NOT (o.status = 'todo' AND o.waiting_for IS NULL))
    );
    END IF;  -- [0018]
    IF any_paused THEN
        PERFORM set_config('pcq.holding', 'on', true);
        UPDATE pcq_jobs AS j SET waiting_for = 'pause'
        WHERE j.id = ANY (ARRAY(
                SELECT n.id FROM new_jobs AS n JOIN old_jobs AS o USING (id)
                WHERE n.status = 'todo' AND n.waiting_for IS NULL
                  AND NOT (o.status = 'todo' AND o.waiting_for IS NULL)
              ))
          AND j.status = 'todo' AND j.waiting_for IS NULL
          AND EXISTS (
              SELECT 1 FROM pcq_paused AS p
              WHERE (p.kind = 'queue' AND p.name = j.queue_name)
                 OR (p.kind = 'task' AND p.name = j.task_name)
          );
        PERFORM set_config('pcq.holding', 'off', true);
    END IF;

    -- Locks whose holder or head left, or with a new contender (0006); a
    -- paused ready job is a head like a ready one (pausing and resuming it
    -- settles nothing).
    IF facts.locks THEN  -- [0018]
    PERFORM pcq_settle_locks(ARRAY(
        SELECT o.lock FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE o.lock IS NOT NULL
          AND (o.status = 'doing'
               OR (o.status = 'todo' AND (o.waiting_for IS NULL OR o.waiting_for = 'pause')))
          AND (n.status NOT IN ('todo', 'doing')
               OR (o.status = 'doing' AND n.status = 'todo')
               OR n.lock IS DISTINCT FROM o.lock
               OR n.waiting_for = 'schedule')
        UNION
        SELECT n.lock FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.lock IS NOT NULL AND n.status = 'todo'
          AND n.waiting_for IS DISTINCT FROM 'schedule'
          AND (o.status <> 'todo'
               OR o.waiting_for = 'schedule'
               OR o.lock IS DISTINCT FROM n.lock
               OR o.priority <> n.priority)
    ));
    END IF;  -- [0018]

    -- Keys that lost a slot holder, or got a new waiting job.
    IF facts.limits THEN  -- [0018]
    PERFORM pcq_settle_limits(ARRAY(
        SELECT o.concurrency_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE o.concurrency_key IS NOT NULL
          AND (o.status = 'doing'
               OR (o.status = 'todo' AND (o.waiting_for IS NULL OR o.waiting_for = 'pause')))
          AND NOT (n.status = 'doing'
                   OR (n.status = 'todo' AND (n.waiting_for IS NULL OR n.waiting_for = 'pause')))
        UNION
        SELECT n.concurrency_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND n.waiting_for = 'limit'
          AND NOT (o.status = 'todo' AND o.waiting_for = 'limit')
    ));
    END IF;  -- [0018]

    -- Wake listening workers for jobs that became ready (and are not paused).
    IF facts.made_ready THEN  -- [0018]
    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (
        SELECT DISTINCT n.queue_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND n.waiting_for IS NULL
          AND NOT (o.status = 'todo' AND o.waiting_for IS NULL)
          AND (NOT any_paused OR NOT EXISTS (
              SELECT 1 FROM pcq_paused AS p
              WHERE (p.kind = 'queue' AND p.name = n.queue_name)
                 OR (p.kind = 'task' AND p.name = n.task_name)
          ))
    ) AS q;
    END IF;  -- [0018]
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_rate_updated ON pcq_jobs;  -- [0018]
DROP FUNCTION IF EXISTS pcq_rate_after_update();

INSERT INTO pcq_migrations (version, name) VALUES (18, 'lean_update_trigger');
