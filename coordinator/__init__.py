"""The single-writer StateCoordinator: appends every event to Postgres and projects Redis read models."""
