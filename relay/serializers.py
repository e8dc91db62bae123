"""Relay serializers."""
