"""Reliability helpers: answer sanitising, config checks, cache and artifact repair, a fault-injecting server."""
