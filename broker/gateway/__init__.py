"""The gateway: agents call upstreams with their broker credential, never the real key.

`config` (the `gateway:` section), `routes` (method, path and model policy), `verify`
(the broker credential), `budgets` (counts and spend in the state store), `keysource`
(the real keys), `proxy` (the request path), `server` (the listener).
"""
