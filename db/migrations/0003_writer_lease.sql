-- Who may append to the event log: one row per partition. A writer holds a session advisory lock (on a
-- dedicated connection) and bumps `epoch` when it takes over; every append locks this row and checks the
-- epoch first (see echelon_platform/adapters/writer_lease.py), so a paused or partitioned ex-leader is
-- fenced out, and appends are serialised (log positions become visible in commit order).
CREATE TABLE IF NOT EXISTS writer_lease (
    partition   text        PRIMARY KEY,
    epoch       bigint      NOT NULL,
    holder      text        NOT NULL,   -- host:pid:token of the process, for operators
    backend_pid int,                    -- the holder's dedicated Postgres backend (for eviction)
    renewed_at  timestamptz NOT NULL    -- the database's clock only: no skew between writers
);
