"""Criteo Marketing Solutions API: token cache, typed errors, audience-segment and contact-list calls."""
