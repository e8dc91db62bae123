"""Apikeys models."""
