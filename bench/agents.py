"""Real coding agents through translation: Claude Code on an OpenAI-format backup, Codex CLI on a chat-only one.

    python bench/agents.py              # both agents that are on PATH
    python bench/agents.py --only claude

For each agent: two fake providers (a primary of the agent's own format that fails every request, a backup
of another format), a sidecar in front of them configured as docs/translation.md says, and the agent run
once, non-interactively, with a task that makes it call a tool. It prints what the agent printed, its exit
code and time, and the sidecar's access log (which node answered, after which failures). An agent that is not
installed (`npm install -g @anthropic-ai/claude-code @openai/codex`) is reported as such. Everything runs on
loopback with a throw-away HOME; nothing is sent anywhere else (the agents' telemetry is turned off).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> None:
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def fake(procs: Procs, tmp: Path, name: str, *args: str) -> int:
    port = free_port()
    procs.start(
        [PYTHON, "-m", "sidecar", "fake-provider", "--port", str(port), "--name", name, *args], tmp / f"{name}.log"
    )
    wait_port(port)
    return port


def sidecar(procs: Procs, tmp: Path, nodes: str) -> int:
    port = free_port()
    config = tmp / "sidecar.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\ncontrol_socket = "{tmp}/ctl.sock"\n{nodes}')
    procs.start([PYTHON, "-m", "sidecar", "run", "-c", str(config), "--log-level", "info"], tmp / "sidecar.log")
    wait_port(port)
    return port


def claude(procs: Procs, tmp: Path) -> tuple[list[str], dict[str, str]]:
    primary = fake(procs, tmp, "claude", "--api", "anthropic", "--fail-rate", "1", "--status", "529")
    backup = fake(procs, tmp, "gpt")
    port = sidecar(
        procs,
        tmp,
        f"""
[[upstream.nodes]]
name = "anthropic"
url = "http://127.0.0.1:{primary}"
api = "anthropic"
priority = 1

[[upstream.nodes]]
name = "openai"
url = "http://127.0.0.1:{backup}"
priority = 0
translate = true
models = {{ "*" = "gpt-4.1" }}
""",
    )
    env = {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": "unused",
           "CLAUDE_CODE_MAX_RETRIES": "0", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}  # fmt: skip
    # The fake calls every tool the last user message names; Bash is allowed without asking.
    return ["claude", "-p", "Use the Bash tool to run a command.", "--allowedTools", "Bash"], env


def codex(procs: Procs, tmp: Path) -> tuple[list[str], dict[str, str]]:
    primary = fake(procs, tmp, "openai", "--fail-rate", "1", "--status", "503")
    backup = fake(procs, tmp, "local", "--no-responses")
    port = sidecar(
        procs,
        tmp,
        f"""
[[upstream.nodes]]
name = "openai"
url = "http://127.0.0.1:{primary}"
priority = 1

[[upstream.nodes]]
name = "local"
url = "http://127.0.0.1:{backup}"
priority = 0
responses = false
translate = true
models = {{ "*" = "qwen3-coder" }}
""",
    )
    home = tmp / "home" / ".codex"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"""model = "gpt-5-codex"
model_provider = "sidecar"
[model_providers.sidecar]
name = "llm-sidecar"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "SIDECAR_KEY"
""")
    env = {"CODEX_HOME": str(home), "SIDECAR_KEY": "unused"}
    return ["codex", "exec", "--skip-git-repo-check", "Use exec_command to list the files."], env


AGENTS = {"claude": claude, "codex": codex}


def run(name: str) -> None:
    print(f"==== {name}")
    if shutil.which(name) is None:
        print(f"{name} is not on PATH: not run")
        return
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix=f"llm-sidecar-{name}-") as directory:
        tmp = Path(directory)
        work = tmp / "work"
        work.mkdir()
        (work / "notes.txt").write_text("hello\n")
        try:
            args, extra = AGENTS[name](procs, tmp)
            env = {**os.environ, "HOME": str(tmp / "home"), **extra}
            version = subprocess.run([name, "--version"], capture_output=True, text=True, env=env, timeout=30)
            print("version:", version.stdout.strip())
            started = time.monotonic()
            done = subprocess.run(
                args, capture_output=True, text=True, env=env, cwd=work, timeout=300, stdin=subprocess.DEVNULL
            )
            print(f"exit {done.returncode} after {time.monotonic() - started:.1f} s")
            print("---- its output (first 40 lines)")
            print("\n".join(done.stdout.splitlines()[:40]))
            if done.returncode:
                print("---- its stderr (last 20 lines)")
                print("\n".join(done.stderr.splitlines()[-20:]))
            time.sleep(0.3)  # the access log is flushed every 100 ms
            print("---- the sidecar's access log")
            for line in (tmp / "sidecar.log").read_text().splitlines():
                if " id=" in line:
                    print(line.split(" id=", 1)[1])
        finally:
            procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(AGENTS))
    args = parser.parse_args()
    for name in [args.only] if args.only else sorted(AGENTS):
        run(name)


if __name__ == "__main__":
    main()
