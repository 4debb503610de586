"""Criteo Marketing Solutions API emulator on loopback, for local runs and tests.

`CriteoEmulator` serves the token, audience-segment search/create/update and contact-list endpoints of API_NOTES.md,
validates every request against Criteo's official OpenAPI spec and injects faults on demand (`emu.faults`).
"""

from devtools.criteo_emulator.faults import Faults
from devtools.criteo_emulator.server import CriteoEmulator

__all__ = ["CriteoEmulator", "Faults"]
