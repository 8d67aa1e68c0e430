-- The judge-answer cache is the log itself: a logged `verify.judge.called` names the answer's cache key
-- (methodology hash, model, exact prompt). This partial index finds one without scanning every event;
-- only judge calls that carry a key are in it.
CREATE INDEX IF NOT EXISTS events_judge_cache_key
    ON events ((payload->>'cache_key'), seq)
    WHERE topic = 'verify.judge.called' AND payload->>'cache_key' IS NOT NULL;
