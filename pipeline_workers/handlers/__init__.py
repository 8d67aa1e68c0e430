"""Stage handlers: each turns one event into the events it causes."""
