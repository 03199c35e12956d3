"""Small building blocks that know nothing of registries: bounded maps, single-flight."""
