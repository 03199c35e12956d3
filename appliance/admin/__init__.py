"""The admin listener and what it shows: status page, metrics, health, the pull audit log."""
