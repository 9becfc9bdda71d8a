-- 0007: reserved for the poison-job bound (#11, branch w11), which is merged
-- in its place; this placeholder only keeps the versions without a gap on
-- the flow-control branch (#13). DELETE THIS FILE when w11's 0007 lands.
INSERT INTO pcq_migrations (version, name) VALUES (7, 'reserved');
