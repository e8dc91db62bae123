"""Metering services."""
