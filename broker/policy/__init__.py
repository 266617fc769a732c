"""Contextual policy: which agent, for which user, which tool, how long, how often."""
