"""Integrations with other tools (each in its own subpackage, importing that tool): not part of the Hub-facing model."""
