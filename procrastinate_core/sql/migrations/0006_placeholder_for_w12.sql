-- 0006: PLACEHOLDER, DELETE AT MERGE. Migration 0006 belongs to branch w12 (readiness);
-- this empty one only keeps branch w11 (whose 0007_poison_jobs follows it) loadable on its
-- own. When w12's 0006 is merged, delete this file (the loader refuses two version 6).

INSERT INTO pcq_migrations (version, name) VALUES (6, 'placeholder_for_w12');
