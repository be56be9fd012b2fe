"""One module per API surface. Each has `routes(gw) -> list[Route]`; `gateway/app.py` lists the modules.

A POST route is a `ProxyEndpoint` plus a `prepare` function (validate, model, presets, images,
affinity); the endpoint does the rest (body limit, auth, balancing, retries, streaming, metrics).
"""
