-- 0009: observability. Every attempt's error is kept, not only the last one;
-- outcomes are counted per minute. Written so that running it again is harmless.
--
-- pcq_jobs.error keeps the latest attempt's error (what procrastinate users
-- read); pcq_jobs.errors is the history: one object per failed attempt, in
-- order, each {attempt, worker_id, at, type, message, traceback}. A row
-- trigger appends to it whenever `error` is set to a new value (or an attempt
-- raises the same error as the one before it), so every path
-- that records an error (a worker's outcome, a recovery, an UPDATE by hand) is
-- kept, and claims (which never set `error`) do not even call it. The history
-- is bounded: past 50 entries the oldest is dropped (a job retried forever must
-- not grow its row forever). It lives in the job's row, so deleting or
-- truncating jobs takes it along.

ALTER TABLE pcq_jobs ADD COLUMN IF NOT EXISTS errors jsonb NOT NULL DEFAULT '[]'::jsonb;

-- Jobs that failed before this migration keep their one known error.
UPDATE pcq_jobs
SET errors = jsonb_build_array(
    jsonb_build_object('attempt', attempts, 'worker_id', worker_id, 'at', finished_at)
    || CASE WHEN jsonb_typeof(error) = 'object' THEN error
            ELSE jsonb_build_object('message', error) END)
WHERE error IS NOT NULL AND errors = '[]'::jsonb;

CREATE OR REPLACE FUNCTION pcq_keep_error_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.errors := CASE WHEN jsonb_array_length(OLD.errors) >= 50 THEN OLD.errors - 0
                       ELSE OLD.errors END
        || jsonb_build_array(
            jsonb_build_object(
                'attempt', NEW.attempts,
                'worker_id', coalesce(NEW.worker_id, OLD.worker_id),
                'at', now())
            || CASE WHEN jsonb_typeof(NEW.error) = 'object' THEN NEW.error
                    ELSE jsonb_build_object('message', NEW.error) END);
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_error_history ON pcq_jobs;
CREATE TRIGGER pcq_jobs_error_history BEFORE UPDATE OF error ON pcq_jobs
    FOR EACH ROW
    -- a new error, or the same error raised again by a later attempt
    WHEN (NEW.error IS NOT NULL
          AND (NEW.error IS DISTINCT FROM OLD.error
               OR (OLD.errors -> -1 ->> 'attempt')::integer IS DISTINCT FROM NEW.attempts))
    EXECUTE FUNCTION pcq_keep_error_history();

-- Outcomes per minute, for dashboards: job_finish_many adds to them. One row per
-- (minute, queue, outcome, backend pid): each connection counts in its own row,
-- so concurrent workers never wait on one another's counter (the upsert of a row
-- already written this minute by the same connection is a HOT update). Readers
-- sum over backends; outcome_stats_prune forgets old minutes.
CREATE TABLE IF NOT EXISTS pcq_outcome_stats (
    minute     timestamptz NOT NULL,
    queue_name text        NOT NULL,
    outcome    text        NOT NULL,
    backend    integer     NOT NULL,
    count      bigint      NOT NULL,
    PRIMARY KEY (minute, queue_name, outcome, backend)
);

INSERT INTO pcq_migrations (version, name) VALUES (9, 'observability');
