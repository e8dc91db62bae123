"""Apikeys api."""
