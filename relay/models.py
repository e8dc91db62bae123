"""Relay models."""
