-- 0016: a rate limit and a concurrency limit on one job. Written so that
-- running it again is harmless.
--
-- Such a job waits for its rate grant first ('rate'), then for a slot of its
-- concurrency key ('limit'), then is ready. Granted means: counted against
-- the rate window until it starts, so a granted job that waits for a slot
-- (status 'todo', waiting_for 'limit') is granted, like a ready or paused
-- one; a job only reaches 'limit' through a grant, since its wait reason
-- puts 'rate' before 'limit'. A lock and a rate limit on one job stay
-- refused (the CHECK below): a lock promises defer order within its chain,
-- which grants given per rate key cannot keep.
--
-- Advisory locks, as 0008 and 0012 take them: 5277 per concurrency key
-- (pcq_settle_limits), 5280 per rate key (pcq_settle_rates). A grant of a
-- job with a concurrency key makes the grant's UPDATE settle that key (the
-- statement trigger sees a job entering 'limit'): 5277 taken while 5280 is
-- held. So that no transaction ever *waits* for 5277 while holding 5280 on
-- this path, the grant first tries each such key's lock without waiting
-- (re-entrant: the nested settle then finds it held by itself); a job whose
-- key is busy is not granted in this pass, and its rate key is looked at
-- again by the stager 50 ms later (its pcq_rate_keys row).
--
-- This file replaces whole, from 0012: the CHECK pcq_jobs_rate_valid,
-- pcq_job_wait_reason, pcq_jobs_rate_granted_idx, pcq_settle_rates,
-- pcq_rate_after_update and pcq_rate_after_delete; each changed line is
-- marked `-- [limit]`. queries.sql's job_promote_due gives due jobs the
-- same order of reasons.

ALTER TABLE pcq_jobs DROP CONSTRAINT IF EXISTS pcq_jobs_rate_valid;
ALTER TABLE pcq_jobs ADD CONSTRAINT pcq_jobs_rate_valid CHECK (
    (rate_key IS NULL AND rate_limit IS NULL AND rate_period IS NULL)
    OR (rate_key IS NOT NULL AND rate_limit >= 1 AND rate_period > 0
        AND lock IS NULL)  -- [limit]
) NOT VALID;

CREATE OR REPLACE FUNCTION pcq_job_wait_reason() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.waiting_for := CASE
        WHEN NEW.status <> 'todo' THEN NULL
        WHEN NEW.scheduled_at > now() THEN 'schedule'
        -- settled by the statement trigger: it may take the lock / a slot at once
        WHEN NEW.lock IS NOT NULL THEN 'lock'
        WHEN NEW.rate_key IS NOT NULL THEN 'rate'  -- [limit] the grant first, then a slot
        WHEN NEW.concurrency_key IS NOT NULL THEN 'limit'
    END;
    RETURN NEW;
END;
$$;

-- The granted jobs not claimed yet: ready, paused, or waiting for a slot.
DROP INDEX IF EXISTS pcq_jobs_rate_granted_idx;
CREATE INDEX IF NOT EXISTS pcq_jobs_rate_granted_idx ON pcq_jobs (rate_key)
    WHERE rate_key IS NOT NULL AND status = 'todo'
      AND coalesce(waiting_for, 'pause') IN ('pause', 'limit');  -- [limit]

CREATE OR REPLACE FUNCTION pcq_settle_rates(keys text[], try_only boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    one_key text;
    slot_key text;
    best record;
    now_at timestamptz;
    window_start timestamptz;
    started bigint;
    oldest timestamptz;
    granted bigint;
    moved bigint;
    total bigint := 0;
    chosen bigint[];  -- [limit]
    busy text[];  -- [limit]
    retry_at timestamptz;  -- [limit]
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
        now_at := clock_timestamp();
        window_start := now_at - make_interval(secs => best.rate_period);
        SELECT s.n, s.oldest, g.n INTO started, oldest, granted
        FROM (SELECT count(*) AS n, min(r.started_at) AS oldest
              FROM pcq_rate_starts AS r
              WHERE r.rate_key = one_key AND r.started_at > window_start) AS s,
             (SELECT count(*) AS n FROM pcq_jobs AS j
              WHERE j.rate_key = one_key AND j.rate_key IS NOT NULL AND j.status = 'todo'
                AND coalesce(j.waiting_for, 'pause') IN ('pause', 'limit')) AS g;  -- [limit]
        moved := 0;
        retry_at := NULL;  -- [limit]
        IF best.rate_limit - started - granted > 0 THEN
            chosen := ARRAY(
                SELECT id FROM pcq_jobs
                WHERE rate_key = one_key AND status = 'todo' AND waiting_for = 'rate'
                ORDER BY priority DESC, id
                LIMIT best.rate_limit - started - granted
                FOR UPDATE SKIP LOCKED
            );
            -- [limit] the concurrency keys of the chosen jobs, their locks tried
            -- without waiting (in the order pcq_settle_limits takes them)
            busy := '{}';
            FOR slot_key IN
                SELECT k FROM (
                    SELECT DISTINCT j.concurrency_key AS k FROM pcq_jobs AS j
                    WHERE j.id = ANY (chosen) AND j.concurrency_key IS NOT NULL
                ) AS d
                ORDER BY hashtext(k), k
            LOOP
                IF NOT pg_try_advisory_xact_lock(5277, hashtext(slot_key)) THEN
                    busy := busy || slot_key;
                END IF;
            END LOOP;
            IF cardinality(busy) > 0 THEN
                retry_at := now_at + interval '50 milliseconds';
            END IF;
            -- a granted job without a concurrency key is ready (the pause gate
            -- of the statement trigger holds one of a paused queue or task);
            -- one with a key waits for a slot, which that trigger settles
            UPDATE pcq_jobs
            SET waiting_for = CASE WHEN concurrency_key IS NULL THEN NULL ELSE 'limit' END  -- [limit]
            WHERE id = ANY (chosen)
              AND (concurrency_key IS NULL OR concurrency_key <> ALL (busy));  -- [limit]
            GET DIAGNOSTICS moved = ROW_COUNT;
            total := total + moved;
        END IF;
        IF EXISTS (
            SELECT 1 FROM pcq_jobs
            WHERE rate_key = one_key AND status = 'todo' AND waiting_for = 'rate'
            ORDER BY priority DESC, id
            LIMIT 1
        ) THEN
            INSERT INTO pcq_rate_keys (rate_key, next_at)
            VALUES (one_key, least(
                retry_at,  -- [limit] a busy concurrency key: soon again
                coalesce(oldest, now_at) + make_interval(secs => best.rate_period)))
            ON CONFLICT (rate_key) DO UPDATE SET next_at = EXCLUDED.next_at;
        ELSE
            DELETE FROM pcq_rate_keys WHERE rate_key = one_key;
        END IF;
    END LOOP;
    RETURN total;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_rate_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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
          AND coalesce(o.waiting_for, 'pause') IN ('pause', 'limit')  -- [limit]
          AND NOT (n.status = 'doing'
                   OR (n.status = 'todo'
                       AND coalesce(n.waiting_for, 'pause') IN ('pause', 'limit')  -- [limit]
                       AND n.rate_key IS NOT DISTINCT FROM o.rate_key))
        UNION
        SELECT n.rate_key FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND n.waiting_for = 'rate'
          AND NOT (o.status = 'todo' AND o.waiting_for = 'rate' AND o.rate_key IS NOT DISTINCT FROM n.rate_key)
    ), false);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_rate_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pcq_settle_rates(ARRAY(
        SELECT DISTINCT o.rate_key FROM old_jobs AS o
        WHERE o.rate_key IS NOT NULL AND o.status = 'todo'
          AND coalesce(o.waiting_for, 'pause') IN ('pause', 'limit')  -- [limit]
    ), false);
    RETURN NULL;
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (16, 'rate_with_limits');
