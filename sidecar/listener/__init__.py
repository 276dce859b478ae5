"""The proxy's listener: the TCP socket, the accept loop and our own HTTP/1.1 server.

Owns: binding (bind.py), accepting in bursts at a connection cap (acceptor.py), one connection's parser,
limits and timeouts (connection.py), one request/response cycle as ASGI (cycle.py), the connections of
one socket (server.py). Imports nothing of the sidecar: the app is handed in as an ASGI callable.
"""
