"""The embedded development trust domain behind `broker dev`."""
