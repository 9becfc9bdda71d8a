-- 0013: listing the jobs that are not finished (list_jobs(status='todo') or
-- 'doing', the shell's `list_jobs --status todo`) reads only them.
--
-- job_list returns jobs oldest first (ORDER BY id). With a status filter, the
-- planner walks pcq_jobs_pkey from the oldest id and filters: waiting and
-- running jobs are the newest rows, so it read every finished row first
-- (5,050,000 rows removed by the filter, 0.5 s at 5,000,000 finished jobs on
-- the shared 2-core machine; 6-8 s at 10,000,000 under load). This index holds
-- only the unfinished rows, in id order: job_list_unfinished reads it and stops
-- after `limit` rows, whatever the number of finished jobs.
--
-- Its cost: one small entry when a job is deferred and one when it is claimed
-- (the claim is not a HOT update); none for finished jobs, and vacuum removes
-- the dead entries of finished ones as for the other partial indexes.
-- CREATE INDEX takes a SHARE lock (deferring waits) for one pass over the
-- table: seconds at 10,000,000 rows. Running it again is harmless.
CREATE INDEX IF NOT EXISTS pcq_jobs_unfinished_idx ON pcq_jobs (id)
    WHERE status IN ('todo', 'doing');

INSERT INTO pcq_migrations (version, name) VALUES (13, 'unfinished_index');
