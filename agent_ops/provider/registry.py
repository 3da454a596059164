"""Which provider a name means; each is imported only when asked for (its SDK is an optional extra)."""
from __future__ import annotations

from agent_ops.provider.base import Provider, ProviderError

PROVIDERS = ("vast",)


def open_provider(name: str) -> Provider:
    """A provider by name, with its credentials from the environment (never from a command line)."""
    if name == "vast":
        from agent_ops.provider.vast import VastProvider

        return VastProvider.from_env()
    raise ProviderError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})")
