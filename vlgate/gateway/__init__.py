"""The HTTP side: a Starlette app that speaks the OpenAI API in front of llama-server backends.

Where a request goes, by file: `app.py` assembles the routes (`routes/`, one module per API);
`proxy.py` is the POST endpoint (body, auth, disconnect watch); `balancer.py` picks a backend;
`upstream.py` sends the bytes (retries); `streaming.py` passes streams back; `postprocess.py` runs
preset parsers on the answer. `state.py` holds the long-lived parts, `poller.py` watches backends.
"""
