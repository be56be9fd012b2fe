"""`vlgate config schema`: the JSON Schema of the config file, for editors to validate `vlgate.yaml`.

    vlgate config schema > vlgate.schema.json
    # VS Code (YAML extension): "yaml.schemas": {"./vlgate.schema.json": ["vlgate.yaml", "configs/*.yaml"]}
    # or, first line of the YAML file:  # yaml-language-server: $schema=./vlgate.schema.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def schema() -> dict[str, Any]:
    """pydantic's JSON Schema of `vlgate.config.Config` (what a YAML file may hold, as it is read)."""
    from vlgate.config import Config

    out = Config.model_json_schema(mode="validation")
    out.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    out.setdefault("title", "vlgate config")
    return out


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema(), indent=None if args.compact else 2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="config tools: `vlgate config schema` prints the config's JSON Schema",
                            description="Config tools.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    schema_p = config_sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)",
                                     description=__doc__.split("\n\n")[0])
    schema_p.add_argument("--compact", action="store_true", help="one line instead of indented")
    schema_p.set_defaults(func=cmd_schema)
