"""Configuration: YAML loaded once into frozen, validated settings (`broker.config.settings`).

Each adapter parses its own section in its own `config.py` with the `Reader` here; this
package imports none of them, so any adapter can import the reader without a cycle.
"""
