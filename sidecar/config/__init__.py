"""The config file: its schema, loading and validation, the template `init` writes, where it is found.

Owns: the frozen dataclasses (schema.py); reading a file with every problem named (load.py, with the
`[server]` table in server.py, `[upstream]` and its nodes in upstream.py, secrets and URLs in values.py, the `env_file` of keys and where a `${VAR}` is looked for in envfile.py,
typed table reading in table.py, the problems themselves in problems.py); discovery of the file and the
control socket (discovery.py); the commented template (template.py) and what `check` prints (plan.py).
Imports only formats: nothing of the data path.
"""
