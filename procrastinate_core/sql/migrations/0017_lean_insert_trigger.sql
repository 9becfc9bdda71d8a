-- 0017: the insert trigger of a plain defer does only what its rows need.
-- Written so that running it again is harmless.
--
-- 0008's pcq_record_inserted_jobs read its transition table once per step
-- (the pause gate's queues and tasks, the locks, the keys, the queues to
-- notify) and called every settling function, with empty arrays for a plain
-- job; 0012 added a second statement trigger (pcq_jobs_rate_inserted) whose
-- only work is settling the rate keys of jobs inserted waiting for a grant.
-- Here one pass over the inserted rows says what the statement holds (the
-- ready jobs' queues and tasks; whether any waits for a lock, a slot or a
-- grant), each step runs only if it has rows to work on, and the rate
-- settling is the last step of this trigger instead of a trigger of its own
-- (it ran after this one: the order of the work is unchanged). Behaviour is
-- 0008's and 0012's, line for line: events, the pause gate (its shared
-- advisory locks taken for the ready jobs' queues and tasks, as
-- pcq_paused_among does), locks, limits, NOTIFY of the ready and not paused
-- jobs' queues, rate grants.

CREATE OR REPLACE FUNCTION pcq_record_inserted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    any_paused boolean := false;
    facts record;
BEGIN
    INSERT INTO pcq_events (job_id, type, attempt)
    SELECT n.id, CASE WHEN n.scheduled_at IS NULL THEN 'deferred' ELSE 'scheduled' END, n.attempts
    FROM new_jobs AS n;
    SELECT array_agg(DISTINCT n.queue_name) FILTER (WHERE n.ready) AS queues,
           array_agg(DISTINCT n.task_name) FILTER (WHERE n.ready) AS tasks,
           coalesce(bool_or(n.status = 'todo' AND n.waiting_for = 'lock'), false) AS locks,
           coalesce(bool_or(n.status = 'todo' AND n.waiting_for = 'limit'), false) AS limits,
           coalesce(bool_or(n.status = 'todo' AND n.waiting_for = 'rate'), false) AS rates
    INTO facts
    FROM (SELECT j.queue_name, j.task_name, j.status, j.waiting_for,
                 (j.status = 'todo' AND j.waiting_for IS NULL) AS ready
          FROM new_jobs AS j) AS n;
    -- The pause gate for the jobs ready as inserted.
    IF facts.queues IS NOT NULL THEN
        any_paused := pcq_paused_among(facts.queues, facts.tasks);
    END IF;
    IF any_paused THEN
        PERFORM set_config('pcq.holding', 'on', true);
        UPDATE pcq_jobs AS j SET waiting_for = 'pause'
        WHERE j.id = ANY (ARRAY(
                SELECT n.id FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for IS NULL
              ))
          AND j.status = 'todo' AND j.waiting_for IS NULL
          AND EXISTS (
              SELECT 1 FROM pcq_paused AS p
              WHERE (p.kind = 'queue' AND p.name = j.queue_name)
                 OR (p.kind = 'task' AND p.name = j.task_name)
          );
        PERFORM set_config('pcq.holding', 'off', true);
    END IF;
    -- A new job of a lock may take it, or overtake the lock's waiting head;
    -- a new job of a key may take a free slot.
    IF facts.locks THEN
        PERFORM pcq_settle_locks(ARRAY(
            SELECT n.lock FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for = 'lock'
        ));
    END IF;
    IF facts.limits THEN
        PERFORM pcq_settle_limits(ARRAY(
            SELECT n.concurrency_key FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for = 'limit'
        ));
    END IF;
    -- Wake listening workers for jobs ready now (settled ones are notified
    -- by their update; paused ones are not ready).
    IF facts.queues IS NOT NULL AND NOT any_paused THEN
        PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
        FROM unnest(facts.queues) AS q(queue_name);
    ELSIF facts.queues IS NOT NULL THEN
        PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
        FROM (
            SELECT DISTINCT n.queue_name FROM new_jobs AS n
            WHERE n.status = 'todo' AND n.waiting_for IS NULL
              AND NOT EXISTS (
                  SELECT 1 FROM pcq_paused AS p
                  WHERE (p.kind = 'queue' AND p.name = n.queue_name)
                     OR (p.kind = 'task' AND p.name = n.task_name)
              )
        ) AS q;
    END IF;
    -- Inserted jobs waiting for a rate grant settle their keys (0012's
    -- pcq_rate_after_insert, which fired after this trigger).
    IF facts.rates THEN
        PERFORM pcq_settle_rates(ARRAY(
            SELECT DISTINCT n.rate_key FROM new_jobs AS n
            WHERE n.status = 'todo' AND n.waiting_for = 'rate'
        ), false);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_rate_inserted ON pcq_jobs;
DROP FUNCTION IF EXISTS pcq_rate_after_insert();

INSERT INTO pcq_migrations (version, name) VALUES (17, 'lean_insert_trigger');
