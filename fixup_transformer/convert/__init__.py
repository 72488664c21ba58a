"""Checkpoint converters between this package's model types and other toolkits' formats."""
