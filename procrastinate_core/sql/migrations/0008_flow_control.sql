-- 0008: flow control on the readiness model of 0006: concurrency limits,
-- paused queues and tasks, unique jobs.
--
-- Two new waiting reasons, promoted by events like 'lock':
--   'limit'  the job has a concurrency_key and its key already has
--            concurrency_limit slot holders; pcq_settle_limits gives freed
--            slots to the best waiting jobs (priority desc, then defer order)
--            when a holder finishes, fails, is retried, recovered, cancelled
--            or deleted, or when a job enters the key;
--   'pause'  the job would be ready, but its queue or task is paused
--            (pcq_paused); pcq_resume makes it ready again.
-- A slot holder of a key (or a lock's head) is a job that runs, is ready, or
-- is ready but paused: pausing freezes a queue as it is, its jobs keep their
-- place in lock order and keep their slots, they just are not claimed.
-- Claims still read ready rows only (pcq_jobs_ready_idx): limited and paused
-- jobs cost them nothing.
--
-- A job has a lock or a concurrency key, not both (`lock` is the limit of 1
-- with its own ordering rules). This file replaces 0006's pcq_job_wait_reason,
-- pcq_settle_locks and the three statement trigger functions: the only
-- change to their lock logic is that a paused ready job still heads its lock.
-- Written so that running it again is harmless.

ALTER TABLE pcq_jobs
    ADD COLUMN IF NOT EXISTS concurrency_key text,
    ADD COLUMN IF NOT EXISTS concurrency_limit integer,
    ADD COLUMN IF NOT EXISTS unique_key text;

ALTER TABLE pcq_jobs DROP CONSTRAINT IF EXISTS pcq_jobs_waiting_for_valid;
ALTER TABLE pcq_jobs ADD CONSTRAINT pcq_jobs_waiting_for_valid
    CHECK (waiting_for IN ('schedule', 'lock', 'limit', 'pause')) NOT VALID;
ALTER TABLE pcq_jobs DROP CONSTRAINT IF EXISTS pcq_jobs_concurrency_valid;
ALTER TABLE pcq_jobs ADD CONSTRAINT pcq_jobs_concurrency_valid CHECK (
    (concurrency_key IS NULL AND concurrency_limit IS NULL)
    OR (concurrency_key IS NOT NULL AND concurrency_limit >= 1 AND lock IS NULL)
) NOT VALID;

-- Paused queues and tasks; survives restarts, read by the pause gate.
CREATE TABLE IF NOT EXISTS pcq_paused (
    kind text NOT NULL CHECK (kind IN ('queue', 'task')),
    name text NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- The next slot takers of a key.
CREATE INDEX IF NOT EXISTS pcq_jobs_limit_queue_idx ON pcq_jobs (concurrency_key, priority DESC, id)
    WHERE status = 'todo' AND waiting_for = 'limit';
-- The slot holders of a key (counted under its advisory lock). The coalesce
-- form, used by the count too, keeps the planner on this index: written with
-- IS NULL / = 'pause' it ANDed the ready and paused indexes (47 ms at 1,000,000
-- paused rows instead of 0.05 ms).
CREATE INDEX IF NOT EXISTS pcq_jobs_limit_holders_idx ON pcq_jobs (concurrency_key)
    WHERE concurrency_key IS NOT NULL
      AND (status = 'doing' OR (status = 'todo' AND coalesce(waiting_for, 'pause') = 'pause'));
-- Paused jobs, for resume; and a paused head of a lock.
CREATE INDEX IF NOT EXISTS pcq_jobs_paused_idx ON pcq_jobs (queue_name, task_name)
    WHERE status = 'todo' AND waiting_for = 'pause';
CREATE INDEX IF NOT EXISTS pcq_jobs_lock_paused_idx ON pcq_jobs (lock)
    WHERE status = 'todo' AND waiting_for = 'pause' AND lock IS NOT NULL;
-- Unique jobs: every job of a key, whatever its state (finished ones count
-- within a period).
CREATE INDEX IF NOT EXISTS pcq_jobs_unique_idx ON pcq_jobs (unique_key, status) WHERE unique_key IS NOT NULL;

-- What a job waits for when it enters `todo` (0006's reasons, then 'limit').
CREATE OR REPLACE FUNCTION pcq_job_wait_reason() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.waiting_for := CASE
        WHEN NEW.status <> 'todo' THEN NULL
        WHEN NEW.scheduled_at > now() THEN 'schedule'
        -- settled by the statement trigger: it may take the lock / a slot at once
        WHEN NEW.lock IS NOT NULL THEN 'lock'
        WHEN NEW.concurrency_key IS NOT NULL THEN 'limit'
    END;
    RETURN NEW;
END;
$$;

-- 0006 skips the function for plain jobs (WHEN); a job with a concurrency
-- key is not plain.
DROP TRIGGER IF EXISTS pcq_jobs_wait_reason_inserted ON pcq_jobs;
CREATE TRIGGER pcq_jobs_wait_reason_inserted BEFORE INSERT ON pcq_jobs
    FOR EACH ROW
    WHEN (NEW.lock IS NOT NULL OR NEW.scheduled_at IS NOT NULL OR NEW.concurrency_key IS NOT NULL
          OR NEW.waiting_for IS NOT NULL OR NEW.status <> 'todo')
    EXECUTE FUNCTION pcq_job_wait_reason();

-- The pause gate, run by the statement triggers for the jobs a statement made
-- ready (inserted, promoted, settled, resumed): those of a paused queue or
-- task are set to wait as 'pause' before anyone else can see them. One check
-- per statement, not per row. This function takes a shared advisory lock per
-- queue and task involved, which pcq_set_paused takes exclusively: a defer
-- or promotion in flight while a queue is paused is either seen by the
-- pause's update or sees the pause row. Returns whether any of them is paused.
CREATE OR REPLACE FUNCTION pcq_paused_among(queues text[], tasks text[]) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(5279, hashtext(k))
    FROM (
        SELECT 'queue:' || q AS k FROM unnest(queues) AS q
        UNION
        SELECT 'task:' || t FROM unnest(tasks) AS t
        ORDER BY 1
    ) AS keys;
    RETURN EXISTS (
        SELECT 1 FROM pcq_paused AS p
        WHERE (p.kind = 'queue' AND p.name = ANY (queues))
           OR (p.kind = 'task' AND p.name = ANY (tasks))
    );
END;
$$;

-- Pauses (paused = true) or resumes a queue or a task, and holds (or
-- releases) up to `batch` of its waiting jobs; returns how many it changed.
-- The caller repeats it until fewer than `batch` change, so each transaction
-- stays short (one statement over 1,000,000 paused rows took over 25 minutes:
-- the statement trigger joins its transition tables). The pause row is
-- written by the first call: from its commit on no job of the queue becomes
-- ready, and the ready ones are held batch by batch. Both take the gate's
-- lock exclusively (see pcq_paused_among).
CREATE OR REPLACE FUNCTION pcq_set_paused(p_kind text, p_name text, paused boolean, batch integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(5279, hashtext(p_kind || ':' || p_name));
    IF paused THEN
        INSERT INTO pcq_paused (kind, name) VALUES (p_kind, p_name) ON CONFLICT DO NOTHING;
        PERFORM set_config('pcq.holding', 'on', true);  -- see pcq_record_updated_jobs
        UPDATE pcq_jobs SET waiting_for = 'pause'
        WHERE id IN (
            SELECT id FROM pcq_jobs
            WHERE status = 'todo' AND waiting_for IS NULL
              AND ((p_kind = 'queue' AND queue_name = p_name) OR (p_kind = 'task' AND task_name = p_name))
            LIMIT batch
            FOR UPDATE SKIP LOCKED
        );
        GET DIAGNOSTICS changed = ROW_COUNT;
        PERFORM set_config('pcq.holding', 'off', true);
        RETURN changed;
    ELSE
        DELETE FROM pcq_paused WHERE kind = p_kind AND name = p_name;
        -- the statement trigger's gate holds those whose other kind is still
        -- paused (they stay 'pause': released by the other resume)
        UPDATE pcq_jobs SET waiting_for = NULL
        WHERE id IN (
            SELECT id FROM pcq_jobs
            WHERE status = 'todo' AND waiting_for = 'pause'
              AND ((p_kind = 'queue' AND queue_name = p_name) OR (p_kind = 'task' AND task_name = p_name))
              AND NOT EXISTS (
                  SELECT 1 FROM pcq_paused AS p
                  WHERE (p.kind = 'queue' AND p.name = pcq_jobs.queue_name)
                     OR (p.kind = 'task' AND p.name = pcq_jobs.task_name)
              )
            LIMIT batch
            FOR UPDATE SKIP LOCKED
        );
    END IF;
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed;
END;
$$;

-- 0006's pcq_settle_locks, with a paused ready job counted as its lock's head.
CREATE OR REPLACE FUNCTION pcq_settle_locks(locks text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    one_lock text;
    head record;
    best record;
BEGIN
    FOR one_lock IN
        SELECT l FROM (SELECT DISTINCT l FROM unnest(locks) AS l WHERE l IS NOT NULL) AS d
        ORDER BY hashtext(l), l
    LOOP
        PERFORM pg_advisory_xact_lock(5276, hashtext(one_lock));
        head := NULL;
        SELECT id, priority INTO head
        FROM pcq_jobs WHERE lock = one_lock AND status = 'todo' AND waiting_for IS NULL
        FOR UPDATE SKIP LOCKED;
        IF head.id IS NULL THEN
            SELECT id, priority INTO head
            FROM pcq_jobs WHERE lock = one_lock AND status = 'todo' AND waiting_for = 'pause'
            ORDER BY priority DESC, id LIMIT 1
            FOR UPDATE SKIP LOCKED;
        END IF;
        -- a head we could not lock: being claimed (or cancelled, paused) right now
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pcq_jobs
            WHERE lock = one_lock AND status = 'todo' AND waiting_for IS NULL
              AND id IS DISTINCT FROM head.id
        ) OR EXISTS (
            SELECT 1 FROM pcq_jobs
            WHERE lock = one_lock AND status = 'todo' AND waiting_for = 'pause'
              AND id IS DISTINCT FROM head.id
        );
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pcq_jobs WHERE lock = one_lock AND status = 'doing'
        );
        best := NULL;
        SELECT id, priority INTO best
        FROM pcq_jobs WHERE lock = one_lock AND status = 'todo' AND waiting_for = 'lock'
        ORDER BY priority DESC, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN best.id IS NULL;
        IF head.id IS NOT NULL THEN
            CONTINUE WHEN head.priority > best.priority
                OR (head.priority = best.priority AND head.id < best.id);
            UPDATE pcq_jobs SET waiting_for = 'lock' WHERE id = head.id;
        END IF;
        -- the pause gate of the statement trigger holds it if its queue or task is paused
        UPDATE pcq_jobs SET waiting_for = NULL WHERE id = best.id;
    END LOOP;
END;
$$;

-- Gives the free slots of each key of `keys` to its best waiting jobs
-- (priority desc, then defer order); a key's limit is the one its best
-- waiting job carries. Serialized per key by pg_advisory_xact_lock(5277, ...):
-- while it is held only this function makes a job of that key ready, so the
-- holders it counts (one statement, one snapshot: a claim moves a row from
-- ready to running, counted either way) can only go down behind its back, by
-- a finish, cancel or delete whose own settling comes after ours and gives
-- the slot then. As for locks, waiting rows are taken with SKIP LOCKED and no
-- row is waited for while the advisory lock is held.
CREATE OR REPLACE FUNCTION pcq_settle_limits(keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    one_key text;
    best record;
    held bigint;
BEGIN
    FOR one_key IN
        SELECT k FROM (SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL) AS d
        ORDER BY hashtext(k), k
    LOOP
        PERFORM pg_advisory_xact_lock(5277, hashtext(one_key));
        best := NULL;
        SELECT id, concurrency_limit INTO best
        FROM pcq_jobs
        WHERE concurrency_key = one_key AND status = 'todo' AND waiting_for = 'limit'
        ORDER BY priority DESC, id
        LIMIT 1;
        CONTINUE WHEN best.id IS NULL;
        SELECT count(*) INTO held
        FROM pcq_jobs
        WHERE concurrency_key = one_key AND concurrency_key IS NOT NULL
          AND (status = 'doing' OR (status = 'todo' AND coalesce(waiting_for, 'pause') = 'pause'));
        CONTINUE WHEN held >= best.concurrency_limit;
        UPDATE pcq_jobs SET waiting_for = NULL
        WHERE id IN (
            SELECT id FROM pcq_jobs
            WHERE concurrency_key = one_key AND status = 'todo' AND waiting_for = 'limit'
            ORDER BY priority DESC, id
            LIMIT best.concurrency_limit - held
            FOR UPDATE SKIP LOCKED
        );
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_record_inserted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    any_paused boolean;
BEGIN
    INSERT INTO pcq_events (job_id, type, attempt)
    SELECT n.id, CASE WHEN n.scheduled_at IS NULL THEN 'deferred' ELSE 'scheduled' END, n.attempts
    FROM new_jobs AS n;
    -- The pause gate for the jobs ready as inserted.
    any_paused := pcq_paused_among(
        ARRAY(SELECT DISTINCT n.queue_name FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for IS NULL),
        ARRAY(SELECT DISTINCT n.task_name FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for IS NULL)
    );
    IF any_paused THEN
        -- ids as an array: a join with the transition table was planned as a
        -- nested loop (2,000 inserted rows: 1.8 s; this form: a pkey probe each)
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
    PERFORM pcq_settle_locks(ARRAY(
        SELECT n.lock FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for = 'lock'
    ));
    PERFORM pcq_settle_limits(ARRAY(
        SELECT n.concurrency_key FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for = 'limit'
    ));
    -- Wake listening workers for jobs ready now (settled ones are notified
    -- by their update; paused ones are not ready).
    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (
        SELECT DISTINCT n.queue_name FROM new_jobs AS n
        WHERE n.status = 'todo' AND n.waiting_for IS NULL
          AND (NOT any_paused OR NOT EXISTS (
              SELECT 1 FROM pcq_paused AS p
              WHERE (p.kind = 'queue' AND p.name = n.queue_name)
                 OR (p.kind = 'task' AND p.name = n.task_name)
          ))
    ) AS q;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_record_updated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    any_paused boolean;
BEGIN
    -- The pause gate's own update (ready -> 'pause', set by pcq.holding)
    -- changes nothing this function acts on: no event, lock, slot or wake-up.
    -- Skipping it matters: its transition tables are joined by nested loops
    -- (10,000 jobs deferred into a paused queue: 15 s with, 0.2 s without).
    IF current_setting('pcq.holding', true) = 'on' THEN
        RETURN NULL;
    END IF;
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

    INSERT INTO pcq_events (job_id, type, attempt, worker_id)
    SELECT n.id, 'abort_requested', n.attempts, n.worker_id
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.abort_requested AND NOT o.abort_requested;

    PERFORM pg_notify('pcq_abort', n.id::text)
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.abort_requested AND NOT o.abort_requested AND n.status = 'doing';

    -- The pause gate for the jobs this statement made ready (a claim makes none).
    any_paused := pcq_paused_among(
        ARRAY(SELECT DISTINCT n.queue_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
              WHERE n.status = 'todo' AND n.waiting_for IS NULL
                AND NOT (o.status = 'todo' AND o.waiting_for IS NULL)),
        ARRAY(SELECT DISTINCT n.task_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
              WHERE n.status = 'todo' AND n.waiting_for IS NULL
                AND NOT (o.status = 'todo' AND o.waiting_for IS NULL))
    );
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

    -- Keys that lost a slot holder, or got a new waiting job.
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

    -- Wake listening workers for jobs that became ready (and are not paused).
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
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pcq_events AS e USING old_jobs AS o WHERE e.job_id = o.id;
    PERFORM pcq_settle_locks(ARRAY(
        SELECT o.lock FROM old_jobs AS o
        WHERE o.lock IS NOT NULL
          AND (o.status = 'doing'
               OR (o.status = 'todo' AND (o.waiting_for IS NULL OR o.waiting_for = 'pause')))
    ));
    PERFORM pcq_settle_limits(ARRAY(
        SELECT o.concurrency_key FROM old_jobs AS o
        WHERE o.concurrency_key IS NOT NULL
          AND (o.status = 'doing'
               OR (o.status = 'todo' AND (o.waiting_for IS NULL OR o.waiting_for = 'pause')))
    ));
    RETURN NULL;
END;
$$;

-- Inserts a JSON array of jobs with flow-control fields (concurrency key and
-- limit, unique key, the states and period it covers, on_conflict); returns
-- one row per item: (ord, id, outcome, conflict_id). outcome is 'inserted',
-- 'ignored' (id is the conflicting job's), 'replaced' (the waiting conflicting
-- jobs were cancelled; conflict_id is one of them), 'conflict' (on_conflict
-- raise: nothing inserted for it) or 'skipped' (all_or_nothing and another
-- item conflicted: nothing inserted at all). A conflict never raises, so it
-- never aborts the caller's transaction.
-- Each unique key is serialized by pg_advisory_xact_lock(5278, ...), taken in
-- key order before any insert and held to commit: two batches with one key
-- cannot both insert it.
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
                                  scheduled_at, concurrency_key, concurrency_limit)
            SELECT j.queue_name, j.task_name, coalesce(j.priority, 0), j.lock, j.queueing_lock,
                   coalesce(j.args, '{}'::jsonb), j.scheduled_at, j.concurrency_key, j.concurrency_limit
            FROM ROWS FROM (
                jsonb_to_recordset(jobs) AS (
                    queue_name text, task_name text, priority integer, lock text, queueing_lock text,
                    args jsonb, scheduled_at timestamptz, concurrency_key text, concurrency_limit integer
                )
            ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                                   scheduled_at, concurrency_key, concurrency_limit, j_ord)
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
                    unique_key text, unique_states text[], unique_seconds float8, on_conflict text
                )
            ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                                   scheduled_at, concurrency_key, concurrency_limit, unique_key,
                                   unique_states, unique_seconds, on_conflict, j_ord)
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
                                  scheduled_at, concurrency_key, concurrency_limit, unique_key)
            VALUES (item.queue_name, item.task_name, coalesce(item.priority, 0), item.lock,
                    item.queueing_lock, coalesce(item.args, '{}'::jsonb), item.scheduled_at,
                    item.concurrency_key, item.concurrency_limit, item.unique_key)
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

INSERT INTO pcq_migrations (version, name) VALUES (8, 'flow_control');
