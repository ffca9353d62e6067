-- Wake the workers of every process when jobs are inserted: one notification per inserting
-- transaction (delivered at its commit, merged with the others of that transaction) on a
-- channel of this schema, so deployments sharing a database do not wake each other.
CREATE FUNCTION logicore_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lc_jobs_' || left(md5(current_schema()), 16), '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION logicore_notify_jobs();
