"""Payments services."""
