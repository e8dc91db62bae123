"""Metering api."""
