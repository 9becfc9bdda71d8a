-- 0019: the delete trigger runs only the steps its rows need. Written so
-- that running it again is harmless.
--
-- With delete_jobs="successful" every batch of outcomes deletes its jobs,
-- and delete_old_jobs deletes in batches: each statement ran 0012's
-- pcq_forget_deleted_jobs (events, then the lock and the concurrency-key
-- settling, each a scan of the transition table and a function call, with
-- empty arrays for plain jobs) and then a second statement trigger,
-- pcq_jobs_rate_deleted (0016's pcq_rate_after_delete: the same for rate
-- keys). Here one pass over the deleted rows says whether any had a lock, a
-- concurrency key or a rate key; each settling runs only then, and the rate
-- settling is this trigger's last step (it fired after it before: the order
-- of the work is unchanged). Lines marked `-- [0019]` are new; the rest is
-- 0012's and 0016's.

CREATE OR REPLACE FUNCTION pcq_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    facts record;  -- [0019]
BEGIN
    DELETE FROM pcq_events AS e
    WHERE e.job_id = ANY (ARRAY(SELECT o.id FROM old_jobs AS o));
    SELECT coalesce(bool_or(o.lock IS NOT NULL), false) AS locks,  -- [0019]
           coalesce(bool_or(o.concurrency_key IS NOT NULL), false) AS limits,
           coalesce(bool_or(o.rate_key IS NOT NULL), false) AS rates
    INTO facts
    FROM old_jobs AS o;
    IF facts.locks THEN  -- [0019]
        PERFORM pcq_settle_locks(ARRAY(
            SELECT o.lock FROM old_jobs AS o
            WHERE o.lock IS NOT NULL
              AND (o.status = 'doing'
                   OR (o.status = 'todo' AND (o.waiting_for IS NULL OR o.waiting_for = 'pause')))
        ));
    END IF;
    IF facts.limits THEN  -- [0019]
        PERFORM pcq_settle_limits(ARRAY(
            SELECT o.concurrency_key FROM old_jobs AS o
            WHERE o.concurrency_key IS NOT NULL
              AND (o.status = 'doing'
                   OR (o.status = 'todo' AND (o.waiting_for IS NULL OR o.waiting_for = 'pause')))
        ));
    END IF;
    -- A granted job deleted before its start gives its grant back (0016).
    IF facts.rates THEN  -- [0019]
        PERFORM pcq_settle_rates(ARRAY(
            SELECT DISTINCT o.rate_key FROM old_jobs AS o
            WHERE o.rate_key IS NOT NULL AND o.status = 'todo'
              AND coalesce(o.waiting_for, 'pause') IN ('pause', 'limit')
        ), false);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pcq_jobs_rate_deleted ON pcq_jobs;  -- [0019]
DROP FUNCTION IF EXISTS pcq_rate_after_delete();

INSERT INTO pcq_migrations (version, name) VALUES (19, 'lean_delete_trigger');
