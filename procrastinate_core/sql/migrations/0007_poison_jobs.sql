-- 0007: poison jobs are bounded.
--
-- A job whose worker died while running it (os._exit, a segfault, the OOM
-- killer) was requeued by the stalled-job sweep forever, and could kill every
-- worker in turn. pcq_jobs now counts those recoveries; job_recover_stalled
-- ends a job `failed` (error type procrastinate_core.exceptions.PoisonJob) once
-- its worker died while running it max_stalled_recoveries times. Each recovery
-- stays in the history as a `recovered` event. Written so that running it again
-- is harmless.

ALTER TABLE pcq_jobs ADD COLUMN IF NOT EXISTS stalled_recoveries integer NOT NULL DEFAULT 0;

INSERT INTO pcq_migrations (version, name) VALUES (7, 'poison_jobs');
