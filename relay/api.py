"""Relay api."""
