"""template.yaml as data, for the local stack and the tests (CloudFormation short forms in their long form)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """YAML with CloudFormation's short-form intrinsics (`!Ref X` → {"Ref": "X"})."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template() -> dict[str, Any]:
    """template.yaml as a dict."""
    template: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return template


def powertools_env() -> dict[str, str]:
    """The Powertools service and metrics namespace the template gives both functions (its one source)."""
    names = load_template()["Mappings"]["Observability"]["Powertools"]
    return {"POWERTOOLS_SERVICE_NAME": names["Service"], "POWERTOOLS_METRICS_NAMESPACE": names["Namespace"]}
