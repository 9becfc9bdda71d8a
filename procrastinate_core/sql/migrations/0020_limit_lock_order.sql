-- 0020: one order for the flow-control advisory locks, across statements.
-- Written so that running it again is harmless.
--
-- Within a statement, 0018's update trigger settled rate keys (lock 5280)
-- before concurrency keys (5277), while the insert (0017) and delete (0019)
-- triggers settle concurrency keys first and rate keys last, and a grant only
-- tries 5277 while holding 5280. So a caller's transaction that freed a slot
-- of key K (5277 held to its commit) and then cancelled a granted job of rate
-- key R (waits for 5280) deadlocked against one worker statement retrying a
-- running job that has both (5280 taken, then waits for 5277): PostgreSQL
-- broke it after deadlock_timeout, failing one of them
-- (tests/integration/test_limit_lock_order.py); a lock name (5276) and a rate
-- key, in two jobs of one statement, likewise. The update trigger now takes
-- the lock names and concurrency keys it will settle first, before any rate
-- key, as the other two triggers do: every statement takes 5276, then 5277,
-- then 5280, and waits for none of them holding a later one.
--
-- This file replaces pcq_record_updated_jobs whole, from 0018; the changed
-- lines are marked `-- [0020]`. Same work in the same order; only when the
-- statement has both kinds of keys are locks taken earlier.

CREATE OR REPLACE FUNCTION pcq_record_updated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    any_paused boolean := false;
    facts record;  -- [0018]
    lock_names text[];  -- [0020]
    limit_keys text[];  -- [0020]
    family integer;  -- [0020]
    one_key text;  -- [0020]
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
    -- [0020] the lock names and concurrency keys the locks and limits steps
    -- below settle (the transition tables do not change within the
    -- statement). With rate keys in the statement too, their advisory locks
    -- are taken now, before the rate step takes any rate key's (5280), in the
    -- order of the insert and delete triggers and of pcq_settle_locks and
    -- pcq_settle_limits: lock names (5276), then concurrency keys (5277), each
    -- sorted by (hashtext, text). The settling below finds them held already.
    IF facts.locks THEN  -- [0020]
        lock_names := ARRAY(
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
        );
    END IF;
    IF facts.limits THEN  -- [0020]
        limit_keys := ARRAY(
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
        );
    END IF;
    IF facts.rates AND (facts.locks OR facts.limits) THEN  -- [0020]
        FOR family, one_key IN
            SELECT f, k FROM (
                SELECT 5276 AS f, unnest(lock_names) AS k
                UNION
                SELECT 5277, unnest(limit_keys)
            ) AS held
            WHERE k IS NOT NULL
            ORDER BY f, hashtext(k), k
        LOOP
            PERFORM pg_advisory_xact_lock(family, hashtext(one_key));
        END LOOP;
    END IF;  -- [0020]
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
    PERFORM pcq_settle_locks(lock_names);  -- [0020] computed above
    END IF;  -- [0018]

    -- Keys that lost a slot holder, or got a new waiting job.
    IF facts.limits THEN  -- [0018]
    PERFORM pcq_settle_limits(limit_keys);  -- [0020] computed above
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

INSERT INTO pcq_migrations (version, name) VALUES (20, 'limit_lock_order');
