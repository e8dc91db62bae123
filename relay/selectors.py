"""Relay selectors."""
