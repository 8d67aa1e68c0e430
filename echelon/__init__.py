"""The composition root: the `echelon` CLI, the one-process stack and the embedded servers.

It is the only package that wires roles (api, coordinator, pipeline_workers) to adapters and settings.
"""
