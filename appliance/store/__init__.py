"""Content-addressed blob files and their SQLite index."""
