"""Payments selectors."""
