"""Talking to real registries: one aiohttp session, our own resolver, redirects, tokens."""
