"""Apikeys admin."""
