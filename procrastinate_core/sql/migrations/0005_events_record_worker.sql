-- 0005: each event records the worker concerned.
--
-- The job row keeps only its current (or last) worker, and recovering a
-- stalled job forgets it; the history now says which worker started each
-- attempt, which one lost a recovered job, and which one finished it. Events
-- written before this migration have no worker (NULL). Written so that
-- running it again is harmless.

ALTER TABLE pcq_events ADD COLUMN IF NOT EXISTS worker_id bigint;

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

    PERFORM pg_notify('pcq_any', ''), pg_notify('pcq_q_' || q.queue_name, '')
    FROM (
        SELECT DISTINCT n.queue_name FROM new_jobs AS n JOIN old_jobs AS o USING (id)
        WHERE n.status = 'todo' AND o.status <> 'todo'
    ) AS q;
    RETURN NULL;
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (5, 'events_record_worker');
