"""Structured pruning: adapters (what a model exposes), importance, selection, search stages."""
