"""Metering selectors."""
