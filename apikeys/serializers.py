"""Apikeys serializers."""
