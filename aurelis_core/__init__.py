"""Aurelis core."""
