"""The managed mirror: tags kept as the build team decided, synced on a schedule within
upstream's rate limit, with history, backups and instant rollback (issue #16)."""
