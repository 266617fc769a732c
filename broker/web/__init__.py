"""The HTTP layer: the only part of the broker that knows aiohttp."""
