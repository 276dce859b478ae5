"""The upstream nodes: their health, selection, checks and the HTTP client that reaches them.

Owns: one config generation of nodes (upstream.py, node.py) and the runtime that swaps generations on
reload (runtime.py), the health state machine (health.py), weighted priority selection (balancer.py),
one attempt's lifecycle (attempt.py), active probes (checker.py), model lists (catalog.py), prompt-cache
pins (affinity.py), the transport seam with aiohttp behind it (transport.py, watchdog.py) and its
in-memory mock (mock.py). Imports config, formats and observe; never the proxy or the control plane.
"""
