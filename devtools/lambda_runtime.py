"""Load the real handler modules the way Lambda does (fresh import, env set first) and call them."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "layers" / "common"
# The environment before any function was loaded: each load starts from it, like a new container.
_HOST_ENV = dict(os.environ)
FUNCTIONS = {"ingest": ROOT / "functions" / "ingest" / "app.py", "sync": ROOT / "functions" / "sync" / "app.py"}


@dataclass
class FakeContext:
    """The parts of LambdaContext the handlers and Powertools use."""

    timeout_seconds: float = 300.0  # first: FakeContext(8) is an 8-second invocation
    function_name: str = "local"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:local"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left of the timeout."""
        return int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000)


def load_function(name: str, env: dict[str, str]) -> ModuleType:
    """Import functions/<name>/app.py as a cold start would: environment first, then a fresh module."""
    os.environ.clear()
    os.environ.update(_HOST_ENV)
    os.environ.update(env)
    if str(LAYER) not in sys.path:
        sys.path.insert(0, str(LAYER))
    # A new container also starts with a fresh layer: no cached token, segment ids or secrets.
    for loaded in [m for m in sys.modules if m == "audience_sync" or m.startswith("audience_sync.")]:
        del sys.modules[loaded]
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()  # type: ignore[no-untyped-call]
    module_name = f"{name}_app"
    spec = importlib.util.spec_from_file_location(module_name, FUNCTIONS[name])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
