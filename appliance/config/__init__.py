"""The regcache configuration: the YAML model, its value types, strict loading, and the
`registries` list as every part asks about it."""
