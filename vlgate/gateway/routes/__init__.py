"""The operator's GET and admin routes (probes, capacity, /admin): each module has `routes(gw)`.

The POST API routes are declared data in their API's package (`apis/<api>/routes.py`), served by the
one endpoint (`endpoint/`); these are plain Starlette routes, listed in `gateway/app.py`.
"""
