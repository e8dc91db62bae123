"""Metering admin."""
