"""Tools for testing eatlab itself: a fault-injecting OpenAI-compatible server, kill points, cache stress."""
