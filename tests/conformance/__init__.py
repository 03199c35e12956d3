"""OCI distribution-spec conformance suite, pointed at any registry endpoint (conftest.py)."""
