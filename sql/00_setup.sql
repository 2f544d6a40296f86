--
-- gptoss regression tests: setup.  The server runs the tiny synthetic model
-- on the CPU (test/regress.conf.in): a random model, so answers are
-- deterministic but meaningless, and text expectations use raw mode.
--
CREATE EXTENSION gptoss;

-- Wait (at most 60 s) until the worker has loaded the model.
DO $$
DECLARE
    st text;
BEGIN
    FOR i IN 1..600 LOOP
        st := gptoss_status()->>'state';
        EXIT WHEN st IN ('ready', 'failed');
        PERFORM pg_sleep(0.1);
    END LOOP;
    IF st IS DISTINCT FROM 'ready' THEN
        RAISE EXCEPTION 'gptoss worker is not ready: %', gptoss_status();
    END IF;
END
$$;

SELECT gptoss_status()->>'state' AS state;

-- try_sql(query): runs query and returns 'ok' or 'SQLSTATE: message', so
-- that expected output shows both the error code and the message.
CREATE FUNCTION try_sql(q text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- The worker is a background process that pg_stat_activity lists.
SELECT backend_type FROM pg_stat_activity WHERE backend_type = 'gptoss worker';
