"""The local registry: a namespace that lives on the gateway only (issue #17)."""
