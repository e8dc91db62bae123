"""Payments serializers."""
