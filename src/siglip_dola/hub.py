"""The model libraries' hub access and their chatter.

Hub ids work for users with a network or a filled cache. Without a network the hub
libraries retry for up to a minute before they fail; when the hub host cannot be reached at
all, :func:`offline_unless_reachable` makes them answer from the local cache only, so a
miss is one immediate, clear error. :func:`quiet_transformers` keeps transformers' warnings
about configs we handle (and, when asked, its progress bars) out of the output.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

__all__ = ["OFFLINE_HINT", "hub_reachable", "offline_unless_reachable", "quiet_transformers"]

OFFLINE_HINT = "not in the local Hugging Face cache, and the hub cannot be reached from here"
_TRUE = {"1", "on", "yes", "true"}


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set (``HF_HUB_OFFLINE``) or the hub's host does not answer
    a TCP connection within ``timeout`` seconds."""
    if (
        os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    ).lower() in _TRUE:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Inside the block the hub libraries use their local cache only when the hub cannot be
    reached; yields whether it can."""
    if hub_reachable():
        yield True
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def quiet_transformers(progress: bool = True) -> Iterator[None]:
    """Silence transformers' warnings (and its progress bars unless ``progress``).

    Its warnings here are about cases the callers handle (token ids a SigLIP config copies
    from CLIP, a tokenizer peeking at a non-HF config.json); missing weights are not left to a
    warning: the loaders check them and name them in an error.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
