DROP INDEX jobs_available;
CREATE INDEX jobs_available ON jobs (run_at, id) WHERE state = 'available';

-- Without statistics SQLite prefers an equality match on (state, ...) over the partial claim
-- index and then sorts every waiting job on each claim; listing by state scans by time
-- instead.
DROP INDEX jobs_state;
CREATE INDEX jobs_state ON jobs (updated_at);
