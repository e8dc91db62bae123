"""Accounts serializers."""
