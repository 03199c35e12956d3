"""regcache: a transparent cache appliance for container registries."""
