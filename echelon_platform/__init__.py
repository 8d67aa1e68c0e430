"""The shared kernel every role builds on.

- `echelon_platform.domain`: pure domain logic with no I/O (events, lifecycle, projections, certificate math).
- `echelon_platform.adapters`: the I/O behind small ports (bus, event store, read-model store, secrets).
- `config`, `errors`, `metrics`, `log_config`, `retry`: settings, the exception tree and process plumbing.
"""
