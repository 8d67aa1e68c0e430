"""Versioned judge prompt templates; each version directory is immutable once released."""
