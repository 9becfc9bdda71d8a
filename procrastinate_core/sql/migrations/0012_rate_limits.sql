-- 0012: rate limits on the readiness model of 0006/0008.
-- At most rate_limit *starts* per rate_period seconds per rate_key, across
-- every worker, decided on the database clock.
--
-- A job with a rate_key waits as 'rate' until pcq_settle_rates grants it a
-- start; granted, it is ready (waiting_for NULL) and an ordinary claim
-- candidate. Claims never read rate-held rows (pcq_jobs_ready_idx).
--
-- What a grant counts, per key, under pg_advisory_xact_lock(5280, key):
--   the starts of the last period (pcq_rate_starts, written when a job of
--   the key is claimed: one row per attempt, so a retried, recovered or
--   deleted job's starts still count), plus the granted jobs not claimed yet
--   (ready, or ready but paused). A grant is given only while that sum is
--   below the limit. Why it bounds every window: take any period-long window
--   and, of the starts in it, the one granted last; at its grant, every other
--   start of the window was either already recorded within the period or
--   still granted-and-waiting, so it was counted: at most N-1 others.
--   (A claim's started_at is its statement's now(), taken after the grant
--   committed, so a start is never earlier than its grant.)
--
-- Who promotes: a job entering 'rate' (defer, retry, recovery, a schedule
-- coming due) or a granted job leaving without starting (cancel, delete)
-- settles its key in the statement triggers; the passing of time is the
-- stager's (job_promote_rate): pcq_rate_keys holds, for each key that still
-- has waiting jobs, when a start of its window expires, and the stager
-- settles the keys whose time has come, in bounded batches.
--
-- A job has at most one of lock, concurrency limit and rate limit (a
-- ConfigurationError in Python, a CHECK here).
--
-- This file replaces whole, from 0008 (and 0010 for pcq_defer_flow's
-- trace_context, lines marked `-- 0010`), pcq_job_wait_reason, the trigger
-- pcq_jobs_wait_reason_inserted and pcq_defer_flow, each changed line marked
-- `-- [rate]`; and
-- pcq_forget_deleted_jobs (a plan fix, not rate limits: marked `-- [events]`). The rate logic of
-- the statement triggers is in triggers of its own (pcq_jobs_rate_*), so
-- 0008's pcq_record_*_jobs are untouched. Written so that running it again
-- is harmless.

ALTER TABLE pcq_jobs
    ADD COLUMN IF NOT EXISTS rate_key text,
    ADD COLUMN IF NOT EXISTS rate_limit integer,
    ADD COLUMN IF NOT EXISTS rate_period double precision;  -- seconds

ALTER TABLE pcq_jobs DROP CONSTRAINT IF EXISTS pcq_jobs_waiting_for_valid;
ALTER TABLE pcq_jobs ADD CONSTRAINT pcq_jobs_waiting_for_valid
    CHECK (waiting_for IN ('schedule', 'lock', 'limit', 'rate', 'pause')) NOT VALID;
ALTER TABLE pcq_jobs DROP CONSTRAINT IF EXISTS pcq_jobs_rate_valid;
ALTER TABLE pcq_jobs ADD CONSTRAINT pcq_jobs_rate_valid CHECK (
    (rate_key IS NULL AND rate_limit IS NULL AND rate_period IS NULL)
    OR (rate_key IS NOT NULL AND rate_limit >= 1 AND rate_period > 0
        AND lock IS NULL AND concurrency_key IS NULL)
) NOT VALID;

-- One row per start of a rate-limited job, kept for its period (the stager
-- prunes expired ones).
CREATE TABLE IF NOT EXISTS pcq_rate_starts (
    rate_key   text        NOT NULL,
    started_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    job_id     bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS pcq_rate_starts_key_idx ON pcq_rate_starts (rate_key, started_at);
CREATE INDEX IF NOT EXISTS pcq_rate_starts_expires_idx ON pcq_rate_starts (expires_at);

-- Keys with waiting jobs and a full window: when to look again.
CREATE TABLE IF NOT EXISTS pcq_rate_keys (
    rate_key text PRIMARY KEY,
    next_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS pcq_rate_keys_next_idx ON pcq_rate_keys (next_at);

-- The next jobs of a key to grant; the granted ones not claimed yet.
CREATE INDEX IF NOT EXISTS pcq_jobs_rate_queue_idx ON pcq_jobs (rate_key, priority DESC, id)
    WHERE status = 'todo' AND waiting_for = 'rate';
CREATE INDEX IF NOT EXISTS pcq_jobs_rate_granted_idx ON pcq_jobs (rate_key)
    WHERE rate_key IS NOT NULL AND status = 'todo' AND coalesce(waiting_for, 'pause') = 'pause';

-- 0008's function, with 'rate' after 'limit'.
CREATE OR REPLACE FUNCTION pcq_job_wait_reason() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.waiting_for := CASE
        WHEN NEW.status <> 'todo' THEN NULL
        WHEN NEW.scheduled_at > now() THEN 'schedule'
        -- settled by the statement trigger: it may take the lock / a slot at once
        WHEN NEW.lock IS NOT NULL THEN 'lock'
        WHEN NEW.concurrency_key IS NOT NULL THEN 'limit'
        WHEN NEW.rate_key IS NOT NULL THEN 'rate'  -- [rate]
    END;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_wait_reason_inserted ON pcq_jobs;
CREATE TRIGGER pcq_jobs_wait_reason_inserted BEFORE INSERT ON pcq_jobs
    FOR EACH ROW
    WHEN (NEW.lock IS NOT NULL OR NEW.scheduled_at IS NOT NULL OR NEW.concurrency_key IS NOT NULL
          OR NEW.rate_key IS NOT NULL  -- [rate]
          OR NEW.waiting_for IS NOT NULL OR NEW.status <> 'todo')
    EXECUTE FUNCTION pcq_job_wait_reason();

-- Grants starts to the best waiting jobs of each key of `keys` (priority
-- desc, then defer order) while the key's starts of the last period plus its
-- granted-unclaimed jobs stay under its limit; the limit and period are the
-- ones its best waiting job carries (keep one per key). Then records when
-- the key must be looked at again (a start of its window expires), or
-- forgets the key if nothing of it waits. With try_only (the stager), a key
-- another transaction is settling is skipped: it stays due for the next pass.
-- Returns how many jobs it granted. Deadlock-free as pcq_settle_limits: while
-- holding a key's advisory lock it waits on no row (SKIP LOCKED), and the
-- pcq_rate_keys row of a key is only written under that lock.
CREATE OR REPLACE FUNCTION pcq_settle_rates(keys text[], try_only boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    one_key text;
    best record;
    now_at timestamptz;
    window_start timestamptz;
    started bigint;
    oldest timestamptz;
    granted bigint;
    moved bigint;
    total bigint := 0;
BEGIN
    FOR one_key IN
        SELECT k FROM (SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL) AS d
        ORDER BY hashtext(k), k
    LOOP
        IF try_only THEN
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(5280, hashtext(one_key));
        ELSE
            PERFORM pg_advisory_xact_lock(5280, hashtext(one_key));
        END IF;
        best := NULL;
        SELECT id, rate_limit, rate_period INTO best
        FROM pcq_jobs
        WHERE rate_key = one_key AND status = 'todo' AND waiting_for = 'rate'
        ORDER BY priority DESC, id
        LIMIT 1;
        IF best.id IS NULL THEN
            DELETE FROM pcq_rate_keys WHERE rate_key = one_key;
            CONTINUE;
        END IF;
        -- the database clock now, after the lock: the window ends here
        now_at := clock_timestamp();
        window_start := now_at - make_interval(secs => best.rate_period);
        -- one statement, one snapshot: a claim committing meanwhile moves a
        -- job from granted to started, counted once either way
        SELECT s.n, s.oldest, g.n INTO started, oldest, granted
        FROM (SELECT count(*) AS n, min(r.started_at) AS oldest
              FROM pcq_rate_starts AS r
              WHERE r.rate_key = one_key AND r.started_at > window_start) AS s,
             (SELECT count(*) AS n FROM pcq_jobs AS j
              WHERE j.rate_key = one_key AND j.rate_key IS NOT NULL AND j.status = 'todo'
                AND coalesce(j.waiting_for, 'pause') = 'pause') AS g;
        moved := 0;
        IF best.rate_limit - started - granted > 0 THEN
            -- the pause gate of the statement trigger holds a granted job of a
            -- paused queue or task (it stays counted as granted)
            UPDATE pcq_jobs SET waiting_for = NULL
            WHERE id IN (
                SELECT id FROM pcq_jobs
                WHERE rate_key = one_key AND status = 'todo' AND waiting_for = 'rate'
                ORDER BY priority DESC, id
                LIMIT best.rate_limit - started - granted
                FOR UPDATE SKIP LOCKED
            );
            GET DIAGNOSTICS moved = ROW_COUNT;
            total := total + moved;
        END IF;
        -- (ordered as the index, so the plan never turns into a scan of the table)
        IF EXISTS (
            SELECT 1 FROM pcq_jobs
            WHERE rate_key = one_key AND status = 'todo' AND waiting_for = 'rate'
            ORDER BY priority DESC, id
            LIMIT 1
        ) THEN
            -- the earliest a unit of the window can free: its oldest start
            -- expiring (a job granted now starts at now_at or later)
            INSERT INTO pcq_rate_keys (rate_key, next_at)
            VALUES (one_key, coalesce(oldest, now_at) + make_interval(secs => best.rate_period))
            ON CONFLICT (rate_key) DO UPDATE SET next_at = EXCLUDED.next_at;
        ELSE
            DELETE FROM pcq_rate_keys WHERE rate_key = one_key;
        END IF;
    END LOOP;
    RETURN total;
END;
$$;

-- Inserted jobs waiting for a rate grant settle their keys.
CREATE OR REPLACE FUNCTION pcq_rate_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pcq_settle_rates(ARRAY(
        SELECT DISTINCT n.rate_key FROM new_jobs AS n
        WHERE n.status = 'todo' AND n.waiting_for = 'rate'
    ), false);
    RETURN NULL;
END;
$$;

-- Claims of rate-limited jobs record their start; jobs entering 'rate', and
-- granted jobs leaving without a start (cancel, reschedule, a change of key),
-- settle their keys. A statement touching no rate-limited job (most claims)
-- costs two scans of its transition tables.
CREATE OR REPLACE FUNCTION pcq_rate_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- the pause gate's own update (ready -> 'pause'): granted either way
    IF current_setting('pcq.holding', true) = 'on'
       OR (NOT EXISTS (SELECT 1 FROM new_jobs WHERE rate_key IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM old_jobs WHERE rate_key IS NOT NULL)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO pcq_rate_starts (rate_key, started_at, expires_at, job_id)
    SELECT n.rate_key, n.started_at, n.started_at + make_interval(secs => n.rate_period), n.id
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.rate_key IS NOT NULL AND n.status = 'doing' AND o.status <> 'doing';
    PERFORM pcq_settle_rates(ARRAY(
        SELECT o.rate_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE o.rate_key IS NOT NULL AND o.status = 'todo'
          AND coalesce(o.waiting_for, 'pause') = 'pause'
          AND NOT (n.status = 'doing'
                   OR (n.status = 'todo' AND coalesce(n.waiting_for, 'pause') = 'pause'
                       AND n.rate_key IS NOT DISTINCT FROM o.rate_key))
        UNION
        SELECT n.rate_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND n.waiting_for = 'rate'
          AND NOT (o.status = 'todo' AND o.waiting_for = 'rate' AND o.rate_key IS NOT DISTINCT FROM n.rate_key)
    ), false);
    RETURN NULL;
END;
$$;

-- A granted job deleted before its start gives its grant back.
CREATE OR REPLACE FUNCTION pcq_rate_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pcq_settle_rates(ARRAY(
        SELECT DISTINCT o.rate_key FROM old_jobs AS o
        WHERE o.rate_key IS NOT NULL AND o.status = 'todo'
          AND coalesce(o.waiting_for, 'pause') = 'pause'
    ), false);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_rate_inserted ON pcq_jobs;
CREATE TRIGGER pcq_jobs_rate_inserted AFTER INSERT ON pcq_jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_rate_after_insert();
DROP TRIGGER IF EXISTS pcq_jobs_rate_updated ON pcq_jobs;
CREATE TRIGGER pcq_jobs_rate_updated AFTER UPDATE ON pcq_jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_rate_after_update();
DROP TRIGGER IF EXISTS pcq_jobs_rate_deleted ON pcq_jobs;
CREATE TRIGGER pcq_jobs_rate_deleted AFTER DELETE ON pcq_jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_rate_after_delete();

-- 0008's pcq_forget_deleted_jobs, its events deleted by an index probe per
-- job. [events] The join with the transition table was planned as a hash join
-- over a sequential scan of pcq_events: every delete of finished jobs
-- (delete_jobs="successful", delete_old_jobs) read the whole event history
-- (550 ms per statement at 1,000,000 events; this form 1.4 ms). Its lock and
-- limit settling is 0008's, unchanged.
CREATE OR REPLACE FUNCTION pcq_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pcq_events AS e
    WHERE e.job_id = ANY (ARRAY(SELECT o.id FROM old_jobs AS o));  -- [events]
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

-- 0008's pcq_defer_flow, storing rate_key, rate_limit and rate_period too.
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
                                  rate_key, rate_limit, rate_period,  -- [rate]
                                  trace_context)  -- 0010
            SELECT j.queue_name, j.task_name, coalesce(j.priority, 0), j.lock, j.queueing_lock,
                   coalesce(j.args, '{}'::jsonb), j.scheduled_at, j.concurrency_key, j.concurrency_limit,
                   j.rate_key, j.rate_limit, j.rate_period,  -- [rate]
                   j.trace_context  -- 0010
            FROM ROWS FROM (
                jsonb_to_recordset(jobs) AS (
                    queue_name text, task_name text, priority integer, lock text, queueing_lock text,
                    args jsonb, scheduled_at timestamptz, concurrency_key text, concurrency_limit integer,
                    rate_key text, rate_limit integer, rate_period float8,  -- [rate]
                    trace_context jsonb  -- 0010
                )
            ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                                   scheduled_at, concurrency_key, concurrency_limit,
                                   rate_key, rate_limit, rate_period,  -- [rate]
                                   trace_context, j_ord)  -- 0010
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
                    rate_key text, rate_limit integer, rate_period float8,  -- [rate]
                    trace_context jsonb  -- 0010
                )
            ) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                                   scheduled_at, concurrency_key, concurrency_limit, unique_key,
                                   unique_states, unique_seconds, on_conflict,
                                   rate_key, rate_limit, rate_period,  -- [rate]
                                   trace_context, j_ord)  -- 0010
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
                                  rate_key, rate_limit, rate_period,  -- [rate]
                                  trace_context)  -- 0010
            VALUES (item.queue_name, item.task_name, coalesce(item.priority, 0), item.lock,
                    item.queueing_lock, coalesce(item.args, '{}'::jsonb), item.scheduled_at,
                    item.concurrency_key, item.concurrency_limit, item.unique_key,
                    item.rate_key, item.rate_limit, item.rate_period,  -- [rate]
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

INSERT INTO pcq_migrations (version, name) VALUES (12, 'rate_limits');
