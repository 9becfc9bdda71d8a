-- Every query the project runs. Each starts with "-- name: noun_verb" and a line
-- saying what it returns; parameters are always %(name)s, never formatted in.
-- JSON goes in as text and comes out as text (::text), so the connectors' own
-- JSON adaptation never interferes with the app's json_dumps / json_loads.

-- name: job_defer_many
-- Inserts the jobs of a JSON array in one statement (pcq_defer_jobs, migration
-- 0011); returns their ids (ids grow in array order), conflict NULL. A job's
-- schedule_in_seconds is added to the database's now(): one clock, whatever the
-- client's says. A queueing lock already held inserts nothing and returns one
-- row (id NULL, conflict: the server's detail): a refusal never raises, so it
-- never aborts the caller's transaction.
SELECT id, conflict FROM pcq_defer_jobs(%(jobs)s::jsonb);

-- name: job_defer_many_nondurable
-- job_defer_many, committed without waiting for its WAL flush (configure(durable=False),
-- docs/durability.md); the same rows. set_config(..., true) is SET LOCAL: it ends with
-- this statement's transaction, which the manager makes sure is the defer's own (never
-- a caller's). The uncorrelated sub-select is an InitPlan (a one-time filter):
-- evaluated once per statement. Keep it job_defer_many plus that filter
-- (tests/unit/test_sql.py).
SELECT id, conflict FROM pcq_defer_jobs(%(jobs)s::jsonb)
WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off';

-- name: job_insert_many
-- job_defer_many for a batch that carries no queueing lock (the client knows):
-- nothing can conflict, so the insert is this statement itself, not a call of
-- pcq_defer_jobs: a prepared statement keeps its plan (a SQL function's INSERT
-- is planned at every call), 0.42 ms instead of 0.53 ms per single defer on
-- the shared 2-core machine. Returns the ids (growing in array order), conflict
-- NULL. Keep the INSERT the same as pcq_insert_jobs' (migration 0011;
-- tests/unit/test_sql.py).
INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at,
                      trace_context)
SELECT j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock, j.args,
       coalesce(j.scheduled_at, now() + make_interval(secs => j.schedule_in_seconds)),
       j.trace_context
FROM ROWS FROM (
    jsonb_to_recordset(%(jobs)s::jsonb) AS (
        queue_name text, task_name text, priority integer, lock text, queueing_lock text,
        args jsonb, scheduled_at timestamptz, schedule_in_seconds float8, trace_context jsonb
    )
) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                       scheduled_at, schedule_in_seconds, trace_context, ord)
ORDER BY j.ord
RETURNING id, NULL::text AS conflict;

-- name: job_insert_many_nondurable
-- job_insert_many committed without waiting for its WAL flush, as
-- job_defer_many_nondurable (the same InitPlan filter; tests/unit/test_sql.py).
INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at,
                      trace_context)
SELECT j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock, j.args,
       coalesce(j.scheduled_at, now() + make_interval(secs => j.schedule_in_seconds)),
       j.trace_context
FROM ROWS FROM (
    jsonb_to_recordset(%(jobs)s::jsonb) AS (
        queue_name text, task_name text, priority integer, lock text, queueing_lock text,
        args jsonb, scheduled_at timestamptz, schedule_in_seconds float8, trace_context jsonb
    )
) WITH ORDINALITY AS j(queue_name, task_name, priority, lock, queueing_lock, args,
                       scheduled_at, schedule_in_seconds, trace_context, ord)
WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
ORDER BY j.ord
RETURNING id, NULL::text AS conflict;

-- name: job_fetch_many
-- Claims up to %(limit)s ready jobs for worker %(worker_id)s; returns the claimed jobs.
-- Ready (waiting_for IS NULL, migration 0006) already means due and, for a
-- job with a lock, being that lock's head; nothing else is looked at.
-- Plan (1,000,000 future-scheduled, 100,000 behind 10 running lock heads,
-- 3,000,000 finished rows): Limit -> LockRows -> Index Scan on
-- pcq_jobs_ready_idx (pcq_jobs_ready_queue_idx with queues), reading only
-- the rows it claims (plus rows other claimers hold, skipped).
-- With 1,000,000 rate-held rows (migration 0012, 10 keys) beside 10,000 ready
-- ones: the same plan, 1.6 ms for 50 jobs warm; recording the starts of
-- claimed rate-limited jobs adds about 0.3 ms (a claim of other jobs skips
-- that step: migration 0018; before it, a trigger of its own cost every
-- claim statement 0.05-0.2 ms).
WITH candidate AS (
    SELECT j.id
    FROM pcq_jobs AS j
    WHERE j.status = 'todo'
      AND j.waiting_for IS NULL
      AND (%(queues)s::text[] IS NULL OR j.queue_name = ANY (%(queues)s::text[]))
    ORDER BY j.priority DESC, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pcq_jobs AS j
SET status = 'doing',
    worker_id = %(worker_id)s,
    attempts = j.attempts + 1,
    started_at = now()
FROM candidate
WHERE j.id = candidate.id
RETURNING j.id, j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock,
          j.args::text AS args, j.status, j.scheduled_at, j.attempts, j.worker_id,
          j.abort_requested, j.created_at, j.started_at, j.finished_at,
          j.result::text AS result, j.error::text AS error,
          j.trace_context::text AS trace_context;

-- name: job_fetch_many_nondurable
-- job_fetch_many for a worker with durable_claims=False: the same claim, committed
-- with synchronous_commit off in its own transaction only (set_config local, an
-- InitPlan run once per statement, no extra round trip). A server crash within
-- about 3 x wal_writer_delay of the commit may lose the claim: its jobs are
-- `todo` again and run again (docs/durability.md).
WITH candidate AS (
    SELECT j.id
    FROM pcq_jobs AS j
    WHERE j.status = 'todo'
      AND j.waiting_for IS NULL
      AND (%(queues)s::text[] IS NULL OR j.queue_name = ANY (%(queues)s::text[]))
      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
    ORDER BY j.priority DESC, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pcq_jobs AS j
SET status = 'doing',
    worker_id = %(worker_id)s,
    attempts = j.attempts + 1,
    started_at = now()
FROM candidate
WHERE j.id = candidate.id
RETURNING j.id, j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock,
          j.args::text AS args, j.status, j.scheduled_at, j.attempts, j.worker_id,
          j.abort_requested, j.created_at, j.started_at, j.finished_at,
          j.result::text AS result, j.error::text AS error,
          j.trace_context::text AS trace_context;

-- name: job_finish_many
-- Records the outcomes of a JSON array of finished attempts, each fenced on
-- (job, worker, attempt, still running); returns the ids actually recorded.
-- A retry whose queueing lock is now held by another waiting job ends failed:
-- the waiting job will do the same work. Each recorded outcome is counted in
-- pcq_outcome_stats (per minute, queue and outcome; one row per backend, so
-- concurrent workers never wait on each other's counters).
WITH outcome AS (
    SELECT *
    FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS o(
        id bigint, worker_id bigint, attempt integer, status text, delete_job boolean,
        retry_at timestamptz, priority integer, queue_name text, lock text,
        result jsonb, error jsonb, retry_in float8
    )
),
deleted AS (
    DELETE FROM pcq_jobs AS j
    USING outcome AS o
    WHERE o.delete_job
      AND j.id = o.id AND j.worker_id = o.worker_id AND j.attempts = o.attempt
      AND j.status = 'doing'
    RETURNING j.id, j.queue_name, o.status
),
updated AS (
    UPDATE pcq_jobs AS j
    SET status = CASE
            WHEN o.status = 'todo' AND j.queueing_lock IS NOT NULL AND EXISTS (
                SELECT 1 FROM pcq_jobs AS t
                WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo'
            ) THEN 'failed'
            ELSE o.status
        END,
        finished_at = CASE WHEN o.status = 'todo' THEN NULL ELSE now() END,
        scheduled_at = CASE WHEN o.status = 'todo'
            THEN coalesce(o.retry_at, now() + make_interval(secs => o.retry_in)) ELSE j.scheduled_at END,
        priority = coalesce(o.priority, j.priority),
        queue_name = coalesce(o.queue_name, j.queue_name),
        lock = coalesce(o.lock, j.lock),
        abort_requested = false,
        result = o.result,
        error = o.error
    FROM outcome AS o
    WHERE NOT coalesce(o.delete_job, false)
      AND j.id = o.id AND j.worker_id = o.worker_id AND j.attempts = o.attempt
      AND j.status = 'doing'
    RETURNING j.id, j.queue_name, j.status
),
counted AS (
    INSERT INTO pcq_outcome_stats AS s (minute, queue_name, outcome, backend, count)
    SELECT date_trunc('minute', now()), f.queue_name,
           CASE WHEN f.status = 'todo' THEN 'retried' ELSE f.status END,
           pg_backend_pid(), count(*)
    FROM (SELECT queue_name, status FROM deleted UNION ALL SELECT queue_name, status FROM updated) AS f
    GROUP BY 1, 2, 3
    ON CONFLICT (minute, queue_name, outcome, backend) DO UPDATE SET count = s.count + excluded.count
)
SELECT id FROM deleted
UNION ALL
SELECT id FROM updated;

-- name: job_recover_stalled
-- Requeues running jobs whose worker has not beaten for %(stalled_seconds)s or
-- has no worker row, then prunes those workers, in one statement. Returns the
-- recovered jobs' ids and new status. Safe to run from several workers at once.
-- A job whose worker died while running it %(max_recoveries)s times (NULL: no
-- bound) ends failed instead: a poison job (migration 0007).
WITH stale AS (
    SELECT w.id
    FROM pcq_workers AS w
    WHERE w.last_heartbeat < now() - make_interval(secs => %(stalled_seconds)s)
    FOR UPDATE SKIP LOCKED
),
orphan AS (
    SELECT j.id
    FROM pcq_jobs AS j
    WHERE j.status = 'doing'
      AND (j.worker_id IS NULL
           OR j.worker_id IN (SELECT id FROM stale)
           OR NOT EXISTS (SELECT 1 FROM pcq_workers AS w WHERE w.id = j.worker_id))
    FOR UPDATE OF j SKIP LOCKED
),
recovered AS (
    UPDATE pcq_jobs AS j
    SET status = CASE
            WHEN j.abort_requested THEN 'aborted'
            WHEN j.stalled_recoveries + 1 >= %(max_recoveries)s::integer THEN 'failed'
            WHEN j.queueing_lock IS NOT NULL AND EXISTS (
                SELECT 1 FROM pcq_jobs AS t
                WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo'
            ) THEN 'cancelled'
            ELSE 'todo'
        END,
        finished_at = CASE
            WHEN j.abort_requested OR j.stalled_recoveries + 1 >= %(max_recoveries)s::integer
                OR (j.queueing_lock IS NOT NULL AND EXISTS (
                SELECT 1 FROM pcq_jobs AS t
                WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo'
            )) THEN now()
        END,
        error = CASE
            WHEN NOT j.abort_requested AND j.stalled_recoveries + 1 >= %(max_recoveries)s::integer THEN jsonb_build_object(
                'type', 'procrastinate_core.exceptions.PoisonJob',
                'message', 'its worker died while running it ' || (j.stalled_recoveries + 1)
                    || ' times (max_stalled_recoveries=' || %(max_recoveries)s::integer
                    || '): the task probably kills its process (os._exit, a crash in a C '
                    || 'extension, the OOM killer); fix it, then retry the job',
                'traceback', '')
            ELSE j.error
        END,
        stalled_recoveries = j.stalled_recoveries + 1,
        worker_id = NULL
    FROM orphan
    WHERE j.id = orphan.id
    RETURNING j.id, j.status
),
pruned AS (
    DELETE FROM pcq_workers AS w
    USING stale
    WHERE w.id = stale.id
)
SELECT id, status FROM recovered;

-- name: job_release_unknown
-- Requeues the running jobs of worker %(worker_id)s that are not in %(known_ids)s:
-- claims whose reply the worker never received (the connection broke after the
-- claim committed). Returns their ids and new status, decided as in job_recover_stalled.
UPDATE pcq_jobs AS j
SET status = CASE
        WHEN j.abort_requested THEN 'aborted'
        WHEN j.queueing_lock IS NOT NULL AND EXISTS (
            SELECT 1 FROM pcq_jobs AS t
            WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo'
        ) THEN 'cancelled'
        ELSE 'todo'
    END,
    finished_at = CASE
        WHEN j.abort_requested OR (j.queueing_lock IS NOT NULL AND EXISTS (
            SELECT 1 FROM pcq_jobs AS t
            WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo'
        )) THEN now()
    END,
    worker_id = NULL
WHERE j.worker_id = %(worker_id)s
  AND j.status = 'doing'
  AND NOT (j.id = ANY (%(known_ids)s::bigint[]))
RETURNING j.id, j.status;

-- name: job_cancel
-- Cancels a waiting job, or (with %(abort)s) asks a running one to abort;
-- returns the job's id and status after the change, nothing if neither applied.
UPDATE pcq_jobs
SET status = CASE WHEN status = 'todo' THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status = 'todo' THEN now() ELSE finished_at END,
    abort_requested = (status = 'doing')
WHERE id = %(job_id)s
  AND (status = 'todo' OR (%(abort)s AND status = 'doing'))
RETURNING id, status;

-- name: job_delete_waiting
-- Deletes a job that has not started; returns its id if it was deleted.
DELETE FROM pcq_jobs
WHERE id = %(job_id)s AND status = 'todo'
RETURNING id;

-- name: job_delete_finished
-- Deletes a finished job (its events go with it); returns its id if it was deleted.
DELETE FROM pcq_jobs
WHERE id = %(job_id)s AND status IN ('succeeded', 'failed', 'cancelled', 'aborted')
RETURNING id;

-- name: job_retry
-- Puts a finished job back in the queue; returns its id if it was finished (and,
-- when %(statuses)s is not null, in one of those statuses).
UPDATE pcq_jobs
SET status = 'todo',
    scheduled_at = %(retry_at)s,
    priority = coalesce(%(priority)s, priority),
    queue_name = coalesce(%(queue_name)s, queue_name),
    lock = coalesce(%(lock)s, lock),
    abort_requested = false,
    worker_id = NULL,
    started_at = NULL,
    finished_at = NULL
WHERE id = %(job_id)s
  AND status IN ('failed', 'aborted', 'cancelled', 'succeeded')
  AND (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
RETURNING id;

-- name: job_get_status
-- Returns the status of one job, nothing if it does not exist.
SELECT status FROM pcq_jobs WHERE id = %(job_id)s;

-- name: job_list
-- Returns the jobs matching every filter that is not null, oldest first.
-- With status 'todo' or 'doing', job_list_unfinished below (the same filters)
-- is used instead: here the planner walks pcq_jobs_pkey from the oldest id and
-- would read every finished job before the first unfinished one.
SELECT id, queue_name, task_name, priority, lock, queueing_lock,
       args::text AS args, status, scheduled_at, attempts, worker_id,
       abort_requested, created_at, started_at, finished_at,
       result::text AS result, error::text AS error, trace_context::text AS trace_context
FROM pcq_jobs
WHERE (%(id)s::bigint IS NULL OR id = %(id)s::bigint)
  AND (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task_name = %(task)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(lock)s::text IS NULL OR lock = %(lock)s::text)
  AND (%(queueing_lock)s::text IS NULL OR queueing_lock = %(queueing_lock)s::text)
  AND (%(worker_id)s::bigint IS NULL OR worker_id = %(worker_id)s::bigint)
ORDER BY id
LIMIT %(limit)s::bigint;

-- name: job_list_unfinished
-- job_list for status 'todo' or 'doing': the literal status IN (...) lets the
-- planner read pcq_jobs_unfinished_idx (migration 0013), in id order, and stop
-- after `limit` rows; the finished rows are never read. At 5,000,000 finished
-- jobs, the first 50 of 40,000 todo: 0.5 s by job_list, 0.1 ms here:
--   Limit -> Index Scan using pcq_jobs_unfinished_idx on pcq_jobs
--              Filter: (status = 'todo'::text)
SELECT id, queue_name, task_name, priority, lock, queueing_lock,
       args::text AS args, status, scheduled_at, attempts, worker_id,
       abort_requested, created_at, started_at, finished_at,
       result::text AS result, error::text AS error, trace_context::text AS trace_context
FROM pcq_jobs
WHERE (%(id)s::bigint IS NULL OR id = %(id)s::bigint)
  AND (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task_name = %(task)s::text)
  AND status IN ('todo', 'doing')
  AND status = %(status)s::text
  AND (%(lock)s::text IS NULL OR lock = %(lock)s::text)
  AND (%(queueing_lock)s::text IS NULL OR queueing_lock = %(queueing_lock)s::text)
  AND (%(worker_id)s::bigint IS NULL OR worker_id = %(worker_id)s::bigint)
ORDER BY id
LIMIT %(limit)s::bigint;

-- name: job_count_by
-- Returns (name, status, count) grouped by %(group_by)s: 'queue', 'task' or 'lock'.
-- Exact, so it reads every row: a Seq Scan at 10,000,000 finished jobs (on
-- the shared 2-core machine, 2.9-3.7 s). The admin's summary uses job_count_by_sampled
-- above a size instead; list_queues / list_tasks / list_locks stay exact.
SELECT CASE %(group_by)s::text
           WHEN 'queue' THEN queue_name
           WHEN 'task' THEN task_name
           ELSE lock
       END AS name,
       status,
       count(*) AS count
FROM pcq_jobs
WHERE (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task_name = %(task)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(lock)s::text IS NULL OR lock = %(lock)s::text)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: job_table_rows
-- Returns the planner's row count of pcq_jobs (rows): its last ANALYZE's
-- reltuples scaled to the table's current size, as the planner scales it;
-- NULL before the first ANALYZE (autovacuum runs one). Reads pg_class only
-- (0.1 ms at 10,000,000 rows): the admin asks it to choose between counting
-- finished jobs and estimating them (job_count_by_sampled).
SELECT CASE WHEN c.reltuples < 0 THEN NULL
            WHEN c.relpages = 0 THEN c.reltuples
            ELSE c.reltuples / c.relpages
                 * (pg_relation_size(c.oid) / current_setting('block_size')::integer)
       END::bigint AS rows
FROM pg_class AS c
WHERE c.oid = 'pcq_jobs'::regclass;

-- name: job_count_by_sampled
-- Returns (name, status, count, estimated) like job_count_by, for a table too
-- big to count: waiting and running jobs are counted exactly, read through
-- pcq_jobs_unfinished_idx (estimated false); finished ones are estimated
-- from a sample of %(sample_percent)s %% of the table's pages (TABLESAMPLE
-- SYSTEM), each sampled row standing for %(rows)s / (rows sampled) jobs
-- (estimated true). REPEATABLE: every call reads the same pages (cached, and
-- the figures do not jump between two refreshes); pages added later are
-- sampled at the same rate. A group with fewer finished jobs than about one
-- in 20,000 may be missed. Plan at 10,000,000 finished jobs, 5,000 waiting
-- (0.2 %%: about 20,000 rows from 480 pages): Sample Scan on pcq_jobs plus an
-- Index Scan on pcq_jobs_unfinished_idx; 33-52 ms on the shared 2-core machine
-- (job_count_by: a Seq Scan, 2.9-3.7 s).
WITH open AS (
    SELECT queue_name, task_name, lock, status FROM pcq_jobs
    WHERE status IN ('todo', 'doing')
),
sample AS MATERIALIZED (
    SELECT queue_name, task_name, lock, status
    FROM pcq_jobs TABLESAMPLE SYSTEM (%(sample_percent)s::float8) REPEATABLE (12)
),
counted AS (
    SELECT o.*, 1::float8 AS weight, false AS estimated FROM open AS o
    UNION ALL
    SELECT s.*, %(rows)s::float8 / (SELECT greatest(count(*), 1) FROM sample), true
    FROM sample AS s
    WHERE s.status NOT IN ('todo', 'doing')
)
SELECT CASE %(group_by)s::text
           WHEN 'queue' THEN queue_name
           WHEN 'task' THEN task_name
           ELSE lock
       END AS name,
       status,
       round(sum(weight))::bigint AS count,
       bool_or(estimated) AS estimated
FROM counted
WHERE (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task_name = %(task)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(lock)s::text IS NULL OR lock = %(lock)s::text)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: job_events_list
-- Returns the history of one job, oldest first, with the worker of each event
-- (NULL for events without one, and for events written before migration 0005).
SELECT job_id, type, attempt, at, worker_id FROM pcq_events WHERE job_id = %(job_id)s ORDER BY id;

-- name: job_delete_old
-- Deletes up to %(batch_size)s jobs finished more than %(nb_hours)s hours ago
-- with one of %(statuses)s (oldest first); returns how many were deleted. The
-- caller repeats it until fewer than %(batch_size)s go, so each transaction
-- stays short. Plan: an Index Scan on pcq_jobs_finished_idx (finished_at < ...).
WITH doomed AS (
    SELECT id
    FROM pcq_jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'aborted')
      AND status = ANY (%(statuses)s::text[])
      AND finished_at < now() - %(nb_hours)s::float8 * interval '1 hour'
      AND (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
    ORDER BY finished_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM pcq_jobs AS j
    USING doomed
    WHERE j.id = doomed.id
    RETURNING 1
)
SELECT count(*) AS deleted FROM deleted;

-- name: job_list_to_abort
-- Returns the ids of the jobs running on worker %(worker_id)s that were asked to abort.
SELECT id FROM pcq_jobs
WHERE status = 'doing' AND abort_requested AND worker_id = %(worker_id)s;

-- name: worker_register
-- Registers a worker; returns its id.
INSERT INTO pcq_workers (name, host, pid) VALUES (%(name)s, %(host)s, %(pid)s)
RETURNING id;

-- name: worker_heartbeat
-- Beats for a worker; returns its id, nothing if its row was pruned as stalled.
UPDATE pcq_workers SET last_heartbeat = now() WHERE id = %(worker_id)s RETURNING id;

-- name: worker_unregister
-- Removes a worker's row; its running jobs, if any, become orphans that
-- job_recover_stalled requeues.
DELETE FROM pcq_workers WHERE id = %(worker_id)s;

-- name: worker_list
-- Returns every registered worker with the age of its last heartbeat in seconds.
SELECT id, name, host, pid, started_at, last_heartbeat,
       extract(epoch FROM now() - last_heartbeat)::float8 AS heartbeat_age
FROM pcq_workers
ORDER BY id;

-- name: periodic_defer
-- Defers the job of one periodic tick unless that tick was already deferred
-- (by this or any other worker); returns the new job's id, nothing otherwise.
-- A tick whose queueing lock is taken is recorded but defers nothing. The
-- task's concurrency and rate limits (migrations 0008, 0012) go with the job;
-- the triggers settle them as for any defer.
WITH tick AS (
    INSERT INTO pcq_periodic_defers (task_name, periodic_id, defer_timestamp, job_id)
    VALUES (%(task_name)s, %(periodic_id)s, %(defer_timestamp)s,
            nextval(pg_get_serial_sequence('pcq_jobs', 'id')))
    ON CONFLICT DO NOTHING
    RETURNING job_id
)
INSERT INTO pcq_jobs (id, queue_name, task_name, priority, lock, queueing_lock, args,
                      concurrency_key, concurrency_limit, rate_key, rate_limit, rate_period)
OVERRIDING SYSTEM VALUE
SELECT tick.job_id, %(queue_name)s, %(task_name)s, %(priority)s, %(lock)s,
       %(queueing_lock)s, %(args)s::jsonb,
       %(concurrency_key)s::text, %(concurrency_limit)s::integer,
       %(rate_key)s::text, %(rate_limit)s::integer, %(rate_period)s::float8
FROM tick
ON CONFLICT (queueing_lock) WHERE status = 'todo' AND queueing_lock IS NOT NULL DO NOTHING
RETURNING id;

-- name: periodic_defer_flow
-- Defers the job of one periodic tick of a task with a unique key (or other
-- flow-control fields, as a one-item job_defer_flow_many array in %(jobs)s)
-- unless that tick was already deferred: pcq_periodic_defer_flow (migration
-- 0015) records the tick first, then defers through pcq_defer_flow_guarded.
-- No row: the tick was deferred before. One row: id, outcome, conflict_id.
-- Plan: the primary key of pcq_periodic_defers, then job_defer_flow_many's.
SELECT id, outcome, conflict_id
FROM pcq_periodic_defer_flow(%(task_name)s, %(periodic_id)s, %(defer_timestamp)s,
                             %(jobs)s::jsonb);

-- name: periodic_defers_prune
-- Forgets ticks older than %(before)s (a Unix timestamp); returns how many.
WITH deleted AS (
    DELETE FROM pcq_periodic_defers WHERE defer_timestamp < %(before)s RETURNING 1
)
SELECT count(*) AS deleted FROM deleted;

-- name: schema_is_installed
-- Returns whether the migrations table exists.
SELECT to_regclass('pcq_migrations') IS NOT NULL AS installed;

-- name: schema_versions_applied
-- Returns the versions of the applied migrations.
SELECT version FROM pcq_migrations ORDER BY version;

-- name: queue_stats
-- Returns one row per queue that has waiting or running jobs: how many wait
-- (todo: ready, scheduled or behind a lock) and run (doing), the age in seconds
-- of the oldest job that could run now (queue latency) and of the longest-running one. Reads the todo and doing
-- rows only (their partial indexes), never the finished ones, so its cost does
-- not grow with history.
-- Waiting jobs are read through pcq_jobs_unfinished_idx (migration 0013),
-- whatever they wait for; before it, one UNION branch per waiting reason read
-- each reason's partial index (a plain scan for status = 'todo' read the whole
-- table: 440 ms at 10,000,000 finished jobs).
WITH todo AS (
    SELECT queue_name, scheduled_at, created_at, waiting_for FROM pcq_jobs
    WHERE status IN ('todo', 'doing') AND status = 'todo'
),
waiting AS (
    SELECT queue_name,
           count(*) AS todo,
           -- ready, or due and not yet promoted by the stager; not blocked or paused
           extract(epoch FROM now() - min(coalesce(scheduled_at, created_at))
               FILTER (WHERE waiting_for IS NULL
                          OR (waiting_for = 'schedule' AND scheduled_at <= now())))::float8
               AS oldest_ready_age
    FROM todo
    GROUP BY queue_name
),
running AS (
    SELECT queue_name,
           count(*) AS doing,
           extract(epoch FROM now() - min(started_at))::float8 AS oldest_running_age
    FROM pcq_jobs
    WHERE status = 'doing'
    GROUP BY queue_name
)
SELECT coalesce(w.queue_name, r.queue_name) AS queue_name,
       coalesce(w.todo, 0) AS todo,
       coalesce(r.doing, 0) AS doing,
       w.oldest_ready_age,
       r.oldest_running_age
FROM waiting AS w
FULL JOIN running AS r ON r.queue_name = w.queue_name
ORDER BY 1;

-- name: job_list_stalled
-- Returns the running jobs whose worker has not beaten for %(stalled_seconds)s
-- or has no worker row (what job_recover_stalled would requeue), optionally of
-- one queue and task, oldest first. Read only: procrastinate's get_stalled_jobs.
-- Plan: pcq_jobs_running_idx (status = 'doing' rows only), whatever the table size.
SELECT j.id, j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock,
       j.args::text AS args, j.status, j.scheduled_at, j.attempts, j.worker_id,
       j.abort_requested, j.created_at, j.started_at, j.finished_at,
       j.result::text AS result, j.error::text AS error, j.trace_context::text AS trace_context
FROM pcq_jobs AS j
WHERE j.status = 'doing'
  AND (%(queue)s::text IS NULL OR j.queue_name = %(queue)s::text)
  AND (%(task_name)s::text IS NULL OR j.task_name = %(task_name)s::text)
  AND NOT EXISTS (
      SELECT 1 FROM pcq_workers AS w
      WHERE w.id = j.worker_id
        AND w.last_heartbeat >= now() - make_interval(secs => %(stalled_seconds)s)
  )
ORDER BY j.id;

-- name: job_promote_due
-- The stager: moves up to %(limit)s scheduled jobs whose time has come (on the
-- database clock) out of waiting; returns how many. A plain job becomes
-- ready at once (its workers are notified); a job with a lock, a concurrency
-- limit or a rate limit waits for it, which the trigger then settles. Safe to
-- run from several workers.
-- Plan: an Index Scan on pcq_jobs_schedule_idx (scheduled_at <= now()): it
-- reads the due jobs only, never the future ones.
WITH due AS (
    SELECT j.id
    FROM pcq_jobs AS j
    WHERE j.status = 'todo'
      AND j.waiting_for = 'schedule'
      AND j.scheduled_at <= now()
    ORDER BY j.scheduled_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE pcq_jobs AS j
    -- what pcq_job_wait_reason gives a job that is due: the statement
    -- trigger then settles its lock, concurrency slot or rate grant
    -- (a job with a rate and a concurrency limit: the grant first, 0016)
    SET waiting_for = CASE WHEN j.lock IS NOT NULL THEN 'lock'
                           WHEN j.rate_key IS NOT NULL THEN 'rate'
                           WHEN j.concurrency_key IS NOT NULL THEN 'limit' END
    FROM due
    WHERE j.id = due.id
    RETURNING j.id
)
SELECT count(*) AS promoted FROM promoted;

-- name: job_promote_rate
-- The stager: settles up to %(limit)s rate-limited keys whose window may have
-- room again (pcq_rate_keys.next_at reached on the database clock, migration
-- 0012), granting starts to their best waiting jobs; returns how many keys it
-- looked at and how many jobs it granted. A key another transaction is
-- settling is skipped (it stays due). Plan: an Index Scan on
-- pcq_rate_keys_next_idx, then per key an index probe on
-- pcq_jobs_rate_queue_idx, pcq_rate_starts_key_idx and
-- pcq_jobs_rate_granted_idx; 1.3 ms for 10 due keys (median, warm) beside
-- 1,000,000 rate-held jobs.
WITH due AS (
    SELECT k.rate_key FROM pcq_rate_keys AS k
    WHERE k.next_at <= now()
    ORDER BY k.next_at
    LIMIT %(limit)s
)
SELECT (SELECT count(*) FROM due) AS keys,
       pcq_settle_rates(ARRAY(SELECT rate_key FROM due), true) AS promoted;

-- name: rate_starts_prune
-- The stager: forgets up to %(limit)s recorded starts of rate-limited jobs
-- whose period is over (they count for no window); returns how many, and in
-- how many seconds the next rate key is due (NULL: none waits), so the
-- stager can wake for it rather than at its next pass. Plans: an Index Scan
-- on pcq_rate_starts_expires_idx; the first entry of pcq_rate_keys_next_idx.
WITH gone AS (
    DELETE FROM pcq_rate_starts
    WHERE ctid = ANY (ARRAY(
        SELECT s.ctid FROM pcq_rate_starts AS s
        WHERE s.expires_at < now()
        ORDER BY s.expires_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS pruned,
       (SELECT extract(epoch FROM k.next_at - now())::float8
        FROM pcq_rate_keys AS k ORDER BY k.next_at LIMIT 1) AS next_in;

-- name: database_now
-- Returns the database's clock as Unix time (seconds): time decisions made in
-- Python (periodic ticks, max_delay) use it, never the host's clock.
SELECT extract(epoch FROM clock_timestamp())::float8 AS now;

-- name: job_defer_flow_many
-- Inserts the jobs of a JSON array with flow-control fields (concurrency key
-- and limit, unique key and its states, period and on_conflict) through
-- pcq_defer_flow (migration 0008); returns one row per item: ord (1-based),
-- id, outcome ('inserted', 'ignored', 'replaced', 'conflict', 'skipped') and
-- conflict_id. A conflict never raises (the caller's transaction goes on).
-- Plan per unique item: an Index Scan on pcq_jobs_unique_idx (unique_key, status);
-- the key's settling reads pcq_jobs_limit_queue_idx (best waiting job) and
-- pcq_jobs_limit_holders_idx (count of holders). 1.2 ms for one limited,
-- unique job beside 1,000,000 limited, 1,000,000 paused and 1,000,000 finished rows.
-- A held queueing lock: every item with outcome 'queueing_lock', nothing
-- inserted (pcq_defer_flow_guarded, migration 0011).
SELECT ord, id, outcome, conflict_id, conflict
FROM pcq_defer_flow_guarded(%(jobs)s::jsonb, %(all_or_nothing)s::boolean);

-- name: paused_set
-- Pauses (%(paused)s true) or resumes the queue or task (%(kind)s) named
-- %(name)s, and holds or releases up to %(batch)s of its waiting jobs;
-- returns how many it changed (the caller repeats until fewer than
-- %(batch)s). Pausing holds ready jobs (no claim sees them); resuming makes
-- them ready and NOTIFYs their queues. Plans (3,000,000 rows: 1,000,000
-- paused, 1,000,000 behind limits, 1,000,000 finished): pause of a queue
-- reads pcq_jobs_ready_queue_idx, resume reads pcq_jobs_paused_idx, each
-- only the batch it changes.
SELECT pcq_set_paused(%(kind)s::text, %(name)s::text, %(paused)s::boolean, %(batch)s::integer) AS changed;

-- name: paused_list
-- Returns the paused queues and tasks: kind ('queue' or 'task'), name, paused_at.
SELECT kind, name, paused_at FROM pcq_paused ORDER BY kind, name;

-- name: job_errors_list
-- Returns the error history of one job (a JSON array, oldest first, one object per
-- failed attempt: attempt, worker_id, at, type, message, traceback); nothing if
-- the job does not exist.
SELECT errors::text AS errors FROM pcq_jobs WHERE id = %(job_id)s;

-- name: outcome_stats_recent
-- Returns the outcomes recorded per minute and queue over the last %(minutes)s
-- minutes (database clock), oldest first: minute, queue_name, outcome
-- (succeeded, failed, retried, aborted, ...), count. Reads the small per-minute
-- table, never the jobs.
SELECT minute, queue_name, outcome, sum(count)::bigint AS count
FROM pcq_outcome_stats
WHERE minute > date_trunc('minute', now()) - make_interval(mins => %(minutes)s)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- name: outcome_stats_prune
-- Forgets per-minute outcome counts older than %(hours)s hours; returns how many rows.
WITH deleted AS (
    DELETE FROM pcq_outcome_stats
    WHERE minute < now() - make_interval(hours => %(hours)s)
    RETURNING 1
)
SELECT count(*) AS deleted FROM deleted;

-- name: worker_running_counts
-- Returns (worker_id, running) for every worker holding running jobs
-- (the running-jobs partial index; finished jobs are not read).
SELECT worker_id, count(*) AS running
FROM pcq_jobs
WHERE status = 'doing' AND worker_id IS NOT NULL
GROUP BY worker_id;
