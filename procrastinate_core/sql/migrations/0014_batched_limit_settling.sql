-- 0014: settling concurrency keys promotes all of a statement's jobs in one
-- UPDATE. Written so that running it again is harmless.
--
-- pcq_settle_limits (0008) ran one UPDATE per key it promoted jobs for, each
-- firing pcq_record_updated_jobs (its transition-table queries: events, abort,
-- pause gate, locks, limits, NOTIFY) once. A finish statement of a worker
-- touching K keys paid K nested trigger runs. Here each key is settled under
-- its advisory lock as before (best waiting job, holder count, the jobs to
-- promote locked FOR UPDATE SKIP LOCKED), the ids are gathered, and one UPDATE
-- promotes them all after the loop: one trigger run per statement. The locks
-- (advisory and row) are held until the transaction ends either way, so what
-- each key may promote is decided exactly as before.
CREATE OR REPLACE FUNCTION pcq_settle_limits(keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    one_key text;
    best record;
    held bigint;
    promote bigint[] := '{}';
BEGIN
    FOR one_key IN
        SELECT k FROM (SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL) AS d
        ORDER BY hashtext(k), k
    LOOP
        PERFORM pg_advisory_xact_lock(5277, hashtext(one_key));
        best := NULL;
        SELECT id, concurrency_limit INTO best
        FROM pcq_jobs
        WHERE concurrency_key = one_key AND status = 'todo' AND waiting_for = 'limit'
        ORDER BY priority DESC, id
        LIMIT 1;
        CONTINUE WHEN best.id IS NULL;
        SELECT count(*) INTO held
        FROM pcq_jobs
        WHERE concurrency_key = one_key AND concurrency_key IS NOT NULL
          AND (status = 'doing' OR (status = 'todo' AND coalesce(waiting_for, 'pause') = 'pause'));
        CONTINUE WHEN held >= best.concurrency_limit;
        promote := promote || ARRAY(
            SELECT id FROM pcq_jobs
            WHERE concurrency_key = one_key AND status = 'todo' AND waiting_for = 'limit'
            ORDER BY priority DESC, id
            LIMIT best.concurrency_limit - held
            FOR UPDATE SKIP LOCKED
        );
    END LOOP;
    IF cardinality(promote) > 0 THEN
        -- the pause gate of the statement trigger holds those of a paused queue or task
        UPDATE pcq_jobs SET waiting_for = NULL WHERE id = ANY (promote);
    END IF;
END;
$$;

INSERT INTO pcq_migrations (version, name) VALUES (14, 'batched_limit_settling');
