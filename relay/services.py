"""Relay services."""
