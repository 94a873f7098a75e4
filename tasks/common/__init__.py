"""Helpers every layer above schemas may use: atomic files, run logging, retry policies."""
