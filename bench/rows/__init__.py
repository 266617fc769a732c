"""The rows, registered in the order they run (see bench/registry.py to add one)."""

from bench.rows import baselines, broker, gateway, latency, memory, micro

__all__ = ["baselines", "broker", "gateway", "latency", "memory", "micro"]
