"""Relay admin."""
