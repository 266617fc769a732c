"""Test harness: run-time PKI, a local Workload API server, process and server fixtures."""
