"""The HTTP side: a Starlette app that speaks the OpenAI (and Anthropic) API in front of llama-server backends.

Where a request goes, by folder: `frontdoor/` (limits, keys, drain) -> `endpoint/` (the one POST endpoint,
applying each route's declaration) -> `apis/<api>/` (the API's own rules and error dialect) ->
`presetrun/` (presets) -> `routing/` (which backend) -> `forward/` (retries, the wire) -> back through
`endpoint/`, accounted in `observe/`. `fleet/` watches the backends; `gateway.py` holds the long-lived parts
and `app.py` assembles them.
"""
