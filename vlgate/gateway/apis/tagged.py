"""Validation of bodies with tagged unions (content blocks chosen by `type`), with clean field paths.

pydantic puts the chosen tag into an error's location (`messages[0].content[0].image.source.type`);
the client wrote `messages[0].content[0].source.type`, so the 400 names that.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from vlgate.errors import APIError
from vlgate.gateway.apis.openai.schemas import validate


def validate_tagged(model: type[BaseModel], body: Any, tags: tuple[str, ...]) -> None:
    try:
        validate(model, body)
    except APIError as exc:
        if not exc.param:
            raise
        clean = re.sub(r"(\[\d+\])\.(?:" + "|".join(map(re.escape, tags)) + r")(?=\.|$)", r"\1", exc.param)
        raise APIError(exc.status, exc.message.replace(f"'{exc.param}'", f"'{clean}'"), param=clean,
                       code=exc.code) from None
