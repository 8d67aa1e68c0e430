"""I/O adapters: JetStream bus, Postgres event store, Redis read-model store, secret store, migrations."""
