"""Accounts selectors."""
