"""Apikeys selectors."""
