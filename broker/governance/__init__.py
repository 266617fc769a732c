"""Governance (CONTRACT section 8): the agent registry's view, and the policy versions kept."""
