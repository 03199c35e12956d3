"""OCI distribution vocabulary: digests, names, references, media types, routes. Pure."""
