-- 0002: what a job returned, or why it failed, kept on the job.
--
-- result: the task's return value as JSON (null when it returned None or could
-- not be encoded). error: {"type", "message", "traceback"} of the last failure.

ALTER TABLE pcq_jobs ADD COLUMN result jsonb;
ALTER TABLE pcq_jobs ADD COLUMN error jsonb;

INSERT INTO pcq_migrations (version, name) VALUES (2, 'job_results');
