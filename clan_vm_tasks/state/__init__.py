"""The state directory: per-VM records, locks, atomic files, the history log, settings."""
