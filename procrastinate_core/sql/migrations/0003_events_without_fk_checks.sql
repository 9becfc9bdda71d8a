-- 0003: a job's events go with it through one statement-level trigger instead
-- of a foreign key.
--
-- The foreign key from pcq_events to pcq_jobs ran one referential check (a
-- query locking the job row) per event, and every claim and every outcome
-- writes an event per job: a measurable share of PostgreSQL's CPU per job.
-- Events are only written by the triggers on pcq_jobs, for the row being
-- inserted or updated (which that statement already holds), so they always
-- name an existing job; what the foreign key still did was ON DELETE CASCADE,
-- and this trigger does the same: deleting jobs deletes their events, in the
-- same statement's transaction. Written so that running it again is harmless.

ALTER TABLE pcq_events DROP CONSTRAINT IF EXISTS pcq_events_job_id_fkey;

CREATE OR REPLACE FUNCTION pcq_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pcq_events AS e USING old_jobs AS o WHERE e.job_id = o.id;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_deleted ON pcq_jobs;
CREATE TRIGGER pcq_jobs_deleted AFTER DELETE ON pcq_jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_forget_deleted_jobs();

INSERT INTO pcq_migrations (version, name) VALUES (3, 'events_without_fk_checks');
