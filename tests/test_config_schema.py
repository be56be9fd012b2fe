"""`vlgate config schema`: the config's JSON Schema (pydantic's), which every shipped config satisfies and
which refuses what the config refuses, so an editor flags a typo in `vlgate.yaml` before `vlgate up` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[1]
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), ROOT / "vlgate/configs/default.yaml"])  # (prometheus.yml is not ours)


@pytest.fixture(scope="module")
def schema() -> dict:
    out = subprocess.run([sys.executable, "-m", "vlgate.cli", "config", "schema"], capture_output=True, text=True,
                         timeout=60, check=True)
    parsed = json.loads(out.stdout)
    jsonschema.Draft202012Validator.check_schema(parsed)
    return parsed


def test_schema_is_the_config_model(schema: dict) -> None:
    from vlgate.config import Config

    assert schema["properties"].keys() == Config.model_json_schema()["properties"].keys()
    assert {"gateway", "backends", "images", "launcher", "presets"} <= schema["properties"].keys()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate(schema: dict, path: Path) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{path.name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("bad", [
    {"gateway": {"prot": 8000}},  # a typo: extra keys are refused
    {"gateway": {"port": "eight thousand"}},
    {"backends": [{"url": "http://127.0.0.1:8081", "slots": "many"}]},
])
def test_schema_refuses_what_the_config_refuses(schema: dict, bad: dict) -> None:
    from vlgate.config import ConfigError, parse_config

    with pytest.raises(ConfigError):
        parse_config(bad, "test")
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad))


def configmap_configs() -> list[tuple[str, str]]:
    """The vlgate configs the Kubernetes manifests carry in ConfigMaps (`data: {config.yaml: |...}`)."""
    out = []
    for path in sorted(ROOT.glob("deploy/kubernetes/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                out += [(f"{path.name}:{name}", text) for name, text in (doc.get("data") or {}).items()
                        if name.endswith((".yaml", ".yml"))]
    return out


@pytest.mark.parametrize("name,text", configmap_configs(), ids=lambda v: v if ":" in str(v) else "")
def test_configmap_configs_validate(schema: dict, name: str, text: str) -> None:
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(text) or {}))
    assert not errors, "\n".join(f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
