"""Metering models."""
