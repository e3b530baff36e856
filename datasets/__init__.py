"""Streaming loaders over lamflow shards and task adapters that join annotations by key."""
