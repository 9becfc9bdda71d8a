-- 0006: readiness as data. A waiting job says what it waits for, and only
-- ready jobs are claim candidates.
--
-- pcq_jobs.waiting_for is NULL for a job that can run now, and for every job
-- that is not `todo`. A `todo` job can wait for:
--   'schedule'  its scheduled_at is in the future; the stager (job_promote_due)
--               moves it on when the database clock reaches it;
--   'lock'      another job of its lock runs, or comes first (priority desc,
--               then defer order); promoted when the lock frees.
-- The public status stays `todo` for all three (users, the admin and
-- job_manager.list_jobs see no difference). Claims read a partial index of
-- ready rows only, so jobs that wait cost them nothing. Flow control adds
-- reasons ('limit', 'rate', 'pause') and promoters of the same kind.
--
-- Who decides readiness: the schema itself, so every path that changes a job
-- (our queries, the admin, psql by hand) keeps it true.
--   * a row trigger sets waiting_for when a job enters `todo` (defer, retry,
--     recovery, manual retry) or its lock or scheduled_at changes;
--   * the statement triggers settle each lock whose holder or head left
--     (finish, failure, retry, recovery, cancel, delete), or that got a new
--     contender (defer, retry, a schedule that came due, priority change):
--     pcq_settle_locks gives the lock to its best waiting job.
-- Settling one lock is serialized by a transaction-level advisory lock on
-- that lock's name (no session state: PgBouncer transaction mode works); see
-- pcq_settle_locks for why it cannot deadlock.
--
-- Existing databases: waiting_for is computed here for every `todo` row, so
-- in-flight jobs (running lock holders included) carry on.

ALTER TABLE pcq_jobs ADD COLUMN waiting_for text;
-- NOT VALID: existing rows are all NULL (valid); new rows are checked.
ALTER TABLE pcq_jobs ADD CONSTRAINT pcq_jobs_waiting_for_valid
    CHECK (waiting_for IN ('schedule', 'lock')) NOT VALID;

-- The readiness of jobs already waiting, before any trigger of this file exists.
UPDATE pcq_jobs SET waiting_for = 'schedule'
WHERE status = 'todo' AND scheduled_at > now();
UPDATE pcq_jobs SET waiting_for = 'lock'
WHERE status = 'todo' AND waiting_for IS NULL AND lock IS NOT NULL;
UPDATE pcq_jobs AS j SET waiting_for = NULL
FROM (
    SELECT DISTINCT ON (w.lock) w.id
    FROM pcq_jobs AS w
    WHERE w.status = 'todo' AND w.waiting_for = 'lock'
      AND NOT EXISTS (
          SELECT 1 FROM pcq_jobs AS r WHERE r.lock = w.lock AND r.status = 'doing'
      )
    ORDER BY w.lock, w.priority DESC, w.id
) AS head
WHERE j.id = head.id;

-- Candidates: ready jobs only (all queues, or some).
DROP INDEX IF EXISTS pcq_jobs_fetch_idx;
DROP INDEX IF EXISTS pcq_jobs_fetch_queue_idx;
DROP INDEX IF EXISTS pcq_jobs_lock_waiting_idx;
CREATE INDEX pcq_jobs_ready_idx ON pcq_jobs (priority DESC, id)
    WHERE status = 'todo' AND waiting_for IS NULL;
CREATE INDEX pcq_jobs_ready_queue_idx ON pcq_jobs (queue_name, priority DESC, id)
    WHERE status = 'todo' AND waiting_for IS NULL;
-- At most one ready job per lock (its head); with pcq_jobs_lock_running_uniq,
-- the database refuses two running jobs of a lock even if a bug tried.
CREATE UNIQUE INDEX pcq_jobs_lock_ready_uniq ON pcq_jobs (lock)
    WHERE status = 'todo' AND waiting_for IS NULL AND lock IS NOT NULL;
-- The next head of a lock: its best job waiting for it.
CREATE INDEX pcq_jobs_lock_queue_idx ON pcq_jobs (lock, priority DESC, id)
    WHERE status = 'todo' AND waiting_for = 'lock';
-- The stager: due scheduled jobs, by an index range on scheduled_at.
CREATE INDEX pcq_jobs_schedule_idx ON pcq_jobs (scheduled_at)
    WHERE status = 'todo' AND waiting_for = 'schedule';

-- What a job waits for when it enters `todo`; NULL once it leaves it.
CREATE FUNCTION pcq_job_wait_reason() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.waiting_for := CASE
        WHEN NEW.status <> 'todo' THEN NULL
        WHEN NEW.scheduled_at > now() THEN 'schedule'
        -- settled by the statement trigger: it may take the lock at once
        WHEN NEW.lock IS NOT NULL THEN 'lock'
    END;
    RETURN NEW;
END;
$$;

-- A plain job (no lock, no schedule) is ready as inserted: no function call.
CREATE TRIGGER pcq_jobs_wait_reason_inserted BEFORE INSERT ON pcq_jobs
    FOR EACH ROW
    WHEN (NEW.lock IS NOT NULL OR NEW.scheduled_at IS NOT NULL
          OR NEW.waiting_for IS NOT NULL OR NEW.status <> 'todo')
    EXECUTE FUNCTION pcq_job_wait_reason();

-- Claims (todo -> doing of a ready row) do not call the function.
CREATE TRIGGER pcq_jobs_wait_reason_updated BEFORE UPDATE OF status, lock, scheduled_at ON pcq_jobs
    FOR EACH ROW
    WHEN ((NEW.status = 'todo'
           AND (OLD.status <> 'todo'
                OR NEW.lock IS DISTINCT FROM OLD.lock
                OR NEW.scheduled_at IS DISTINCT FROM OLD.scheduled_at))
          OR (NEW.status <> 'todo' AND OLD.waiting_for IS NOT NULL))
    EXECUTE FUNCTION pcq_job_wait_reason();

-- Gives each lock of `locks` to its best job if nobody holds it: the running
-- job, else the ready head, else the best job waiting for it (priority desc,
-- then defer order); a better waiting job takes the head's place.
--
-- Serialized per lock by pg_advisory_xact_lock(5276, hashtext(lock)), taken in
-- key order: while it is held, only this function makes a job of that lock
-- ready. Deadlock-free because, holding it, the function never waits on a
-- row: rows are taken with SKIP LOCKED, and a ready head locked by someone
-- else (a claim making it run, a cancel or delete) means that someone decides
-- the lock: a claim holds it, and a cancel settles it after this transaction.
-- Each statement runs with a fresh snapshot (read committed), in this order:
-- lock our ready head first, then count ready rows (one we could not lock is
-- someone else's), then look for a running job. A claim that commits between
-- two steps is seen by the later one.
CREATE FUNCTION pcq_settle_locks(locks text[]) RETURNS void
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
        -- a ready head we could not lock: being claimed (or cancelled) right now
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pcq_jobs
            WHERE lock = one_lock AND status = 'todo' AND waiting_for IS NULL
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
        UPDATE pcq_jobs SET waiting_for = NULL WHERE id = best.id;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_record_inserted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pcq_events (job_id, type, attempt)
    SELECT n.id, CASE WHEN n.scheduled_at IS NULL THEN 'deferred' ELSE 'scheduled' END, n.attempts
    FROM new_jobs AS n;
    -- A new job of a lock may take it, or overtake the lock's waiting head.
    PERFORM pcq_settle_locks(ARRAY(
        SELECT n.lock FROM new_jobs AS n WHERE n.status = 'todo' AND n.waiting_for = 'lock'
    ));
    -- Wake listening workers for jobs ready now: one channel per queue and one
    -- for "any queue". NOTIFY is delivered at commit and folded per transaction.
    -- (A lock job made ready by the settling above is notified by its update.)
    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (
        SELECT DISTINCT queue_name FROM new_jobs
        WHERE status = 'todo' AND waiting_for IS NULL
    ) AS q;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pcq_record_updated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

    -- Settle the locks whose holder or head left (finish, failure, retry,
    -- recovery, cancel, reschedule, lock change), and those with a new
    -- contender (retry, recovery, a schedule that came due, priority change).
    -- A claim (ready -> doing) and the settling's own moves match neither.
    PERFORM pcq_settle_locks(ARRAY(
        SELECT o.lock FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE o.lock IS NOT NULL
          AND (o.status = 'doing' OR (o.status = 'todo' AND o.waiting_for IS NULL))
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

    -- Wake listening workers for jobs that became ready.
    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (
        SELECT DISTINCT n.queue_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND n.waiting_for IS NULL
          AND NOT (o.status = 'todo' AND o.waiting_for IS NULL)
    ) AS q;
    RETURN NULL;
END;
$$;

-- Deleting a lock's holder or head (finish with delete, delete of a waiting
-- job) gives the lock to the next job.
CREATE OR REPLACE FUNCTION pcq_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pcq_events AS e USING old_jobs AS o WHERE e.job_id = o.id;
    PERFORM pcq_settle_locks(ARRAY(
        SELECT o.lock FROM old_jobs AS o
        WHERE o.lock IS NOT NULL
          AND (o.status = 'doing' OR (o.status = 'todo' AND o.waiting_for IS NULL))
    ));
    RETURN NULL;
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (6, 'readiness');
