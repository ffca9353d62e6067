-- Wake the event relays of every process when events are written (see the jobs wake-ups).
CREATE FUNCTION logicore_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lc_events_' || left(md5(current_schema()), 16), '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_written AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION logicore_notify_events();
