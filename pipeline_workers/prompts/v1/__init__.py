"""Methodology v1 prompt templates (hashes pinned in manifest.json)."""
