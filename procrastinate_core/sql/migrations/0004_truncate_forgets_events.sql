-- 0004: emptying pcq_jobs with TRUNCATE empties pcq_events too.
--
-- Since 0003 no foreign key ties events to jobs, so `TRUNCATE pcq_jobs` alone
-- used to leave every event behind, and after `RESTART IDENTITY` a new job
-- would show the history of the old job that had its id. TRUNCATE fires no
-- DELETE trigger, hence a TRUNCATE trigger of its own. Written so that running
-- it again is harmless.

CREATE OR REPLACE FUNCTION pcq_forget_truncated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        TRUNCATE pcq_events;
    EXCEPTION WHEN object_in_use THEN
        -- The same statement truncates pcq_events too (TRUNCATE pcq_jobs,
        -- pcq_events), or this session has it open: DELETE works either way.
        DELETE FROM pcq_events;
    END;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_truncated ON pcq_jobs;
CREATE TRIGGER pcq_jobs_truncated AFTER TRUNCATE ON pcq_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pcq_forget_truncated_jobs();

INSERT INTO pcq_migrations (version, name) VALUES (4, 'truncate_forgets_events');
