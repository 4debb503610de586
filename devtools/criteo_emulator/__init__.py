"""Criteo API emulator for local runs and tests (see README, "Criteo emulator")."""

from devtools.criteo_emulator.server import CriteoEmulator

__all__ = ["CriteoEmulator"]
