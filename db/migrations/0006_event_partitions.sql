-- The log partition each event was appended to (see echelon_platform/domain/partitions.py). One writer per
-- partition assigns its events' `seq`; positions are in commit order within a partition, not across
-- partitions, so whoever tails the log does so per partition. A constant default: no table rewrite.
-- No index of its own: a writer's catch-up reads `seq > checkpoint` (the seq index) and filters, and
-- an index would cost every append for reads that are rare.
ALTER TABLE events ADD COLUMN IF NOT EXISTS partition smallint NOT NULL DEFAULT 0;
