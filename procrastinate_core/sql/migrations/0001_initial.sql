-- 0001: jobs, their event history, workers and periodic-defer bookkeeping.
--
-- Every object is prefixed pcq_ so the schema can live beside other queues
-- (the `procrastinate` library included) in one database.
--
-- Each migration file runs as one implicit transaction and ends by recording
-- itself in pcq_migrations, so a half-applied migration never looks applied.

CREATE TABLE pcq_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pcq_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_name      text        NOT NULL,
    task_name       text        NOT NULL,
    priority        integer     NOT NULL DEFAULT 0,
    lock            text,
    queueing_lock   text,
    args            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status          text        NOT NULL DEFAULT 'todo',
    scheduled_at    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    worker_id       bigint,
    abort_requested boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    CONSTRAINT pcq_jobs_status_valid CHECK (
        status IN ('todo', 'doing', 'succeeded', 'failed', 'cancelled', 'aborted')
    ),
    CONSTRAINT pcq_jobs_queue_name_length CHECK (octet_length(queue_name) BETWEEN 1 AND 50)
);

-- Claiming: the oldest, highest-priority ready job, for all queues or a few.
CREATE INDEX pcq_jobs_fetch_idx ON pcq_jobs (priority DESC, id) WHERE status = 'todo';
CREATE INDEX pcq_jobs_fetch_queue_idx ON pcq_jobs (queue_name, priority DESC, id) WHERE status = 'todo';
-- At most one waiting job per queueing lock, at most one running job per lock.
CREATE UNIQUE INDEX pcq_jobs_queueing_lock_uniq ON pcq_jobs (queueing_lock)
    WHERE status = 'todo' AND queueing_lock IS NOT NULL;
CREATE UNIQUE INDEX pcq_jobs_lock_running_uniq ON pcq_jobs (lock)
    WHERE status = 'doing' AND lock IS NOT NULL;
CREATE INDEX pcq_jobs_lock_waiting_idx ON pcq_jobs (lock, priority DESC, id)
    WHERE status = 'todo' AND lock IS NOT NULL;
-- Running jobs by worker: stalled-job recovery and abort polling.
CREATE INDEX pcq_jobs_running_idx ON pcq_jobs (worker_id) WHERE status = 'doing';
-- Cleaning finished jobs by age.
CREATE INDEX pcq_jobs_finished_idx ON pcq_jobs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'aborted');

CREATE TABLE pcq_events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  bigint      NOT NULL REFERENCES pcq_jobs (id) ON DELETE CASCADE,
    type    text        NOT NULL,
    attempt integer     NOT NULL DEFAULT 0,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pcq_events_job_idx ON pcq_events (job_id, id);

CREATE TABLE pcq_workers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text,
    host           text,
    pid            integer,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pcq_workers_heartbeat_idx ON pcq_workers (last_heartbeat);

-- One row per (periodic task, tick) ever deferred: the primary key is what makes
-- several workers defer each tick exactly once.
CREATE TABLE pcq_periodic_defers (
    task_name      text   NOT NULL,
    periodic_id    text   NOT NULL DEFAULT '',
    defer_timestamp bigint NOT NULL,
    job_id         bigint,
    PRIMARY KEY (task_name, periodic_id, defer_timestamp)
);

-- History is written by statement-level triggers, so a batch claim or a batch
-- finish costs one INSERT ... SELECT, and changes made by hand (admin, psql)
-- are recorded too.
CREATE FUNCTION pcq_record_inserted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pcq_events (job_id, type, attempt)
    SELECT n.id, CASE WHEN n.scheduled_at IS NULL THEN 'deferred' ELSE 'scheduled' END, n.attempts
    FROM new_jobs AS n;
    -- Wake listening workers: one channel per queue and one for "any queue".
    -- NOTIFY is delivered at commit and folded per transaction.
    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (SELECT DISTINCT queue_name FROM new_jobs WHERE status = 'todo') AS q;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pcq_record_updated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pcq_events (job_id, type, attempt)
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
           n.attempts
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.status <> o.status;

    INSERT INTO pcq_events (job_id, type, attempt)
    SELECT n.id, 'abort_requested', n.attempts
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.abort_requested AND NOT o.abort_requested;

    PERFORM pg_notify('pcq_abort', n.id::text)
    FROM new_jobs AS n JOIN old_jobs AS o USING (id)
    WHERE n.abort_requested AND NOT o.abort_requested AND n.status = 'doing';

    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (
        SELECT DISTINCT n.queue_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND o.status <> 'todo'
    ) AS q;
    RETURN NULL;
END;
$$;

CREATE TRIGGER pcq_jobs_inserted AFTER INSERT ON pcq_jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_record_inserted_jobs();

CREATE TRIGGER pcq_jobs_updated AFTER UPDATE ON pcq_jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_record_updated_jobs();

INSERT INTO pcq_migrations (version, name) VALUES (1, 'initial');
