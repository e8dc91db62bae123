"""Metering serializers."""
