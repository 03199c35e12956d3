"""Registry semantics with no HTTP objects: tags, manifests, blobs, single-flight fills."""
