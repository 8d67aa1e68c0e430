"""Ports: the narrow interfaces roles use, each implemented by a server adapter and an in-memory twin.

Split by who uses them (the writer records, everyone reads, the watchdog, stats and API query), so a role is
handed only what it needs and its logic can be tested on the in-memory twins (adapters/memory/).
"""
