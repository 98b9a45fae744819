"""``priorcase bench``: kNN backends and ingest measured in one run (not part of the tests)."""
