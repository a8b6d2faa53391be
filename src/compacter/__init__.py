"""Compacter."""
