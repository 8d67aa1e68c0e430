"""Stage workers of a verification run: ingest → invoke → score → certify."""
