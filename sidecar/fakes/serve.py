"""Run a fake provider: pick the fake for an API format and serve it (tests, the demo, `llm-sidecar fake-provider`)."""

from __future__ import annotations

from aiohttp import web

from sidecar.formats.dialect import APIS_SPOKEN

from .core import Behaviour
from .openai import FakeProvider

APIS = APIS_SPOKEN


def provider_class(api: str = "openai") -> type[FakeProvider]:
    """The fake for API dialect `api`, one of APIS: FakeProvider, or anthropic.AnthropicFake."""
    if api == "openai":
        return FakeProvider
    if api == "anthropic":
        from .anthropic import AnthropicFake

        return AnthropicFake
    raise ValueError(f"api must be one of {', '.join(APIS)}")


async def start(
    name: str, host: str, port: int, behaviour: Behaviour | None = None, api: str = "openai"
) -> tuple[FakeProvider, web.AppRunner]:
    provider = provider_class(api)(name, behaviour)
    runner = web.AppRunner(provider.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return provider, runner


def serve_forever(name: str, host: str, port: int, behaviour: Behaviour, api: str = "openai") -> None:
    provider = provider_class(api)(name, behaviour)
    web.run_app(provider.app, host=host, port=port, access_log=None, print=None, shutdown_timeout=0.5)
