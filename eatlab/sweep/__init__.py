"""Sweeps: the Hydra callback and the summary it writes when a multirun ends."""
