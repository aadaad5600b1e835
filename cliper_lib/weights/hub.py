"""The Hugging Face hub cache: where weights are looked for, whether downloads can work, and what to
say when not."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlparse


class WeightsMissingError(RuntimeError):
    """Model weights are neither in the local cache nor downloadable; the message says how to get
    them. `missing` (inventory.WeightFile rows, when known) lets the command line say it again in
    its own options."""

    def __init__(self, message: str, missing: list | None = None) -> None:
        super().__init__(message)
        self.missing = missing


def hub_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub)."""
    # lazy: the command line (every command, --help included) and the app page import this module
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when downloads could work: not HF_HUB_OFFLINE and the hub's host resolves and accepts a
    connection."""
    from huggingface_hub import constants  # lazy, as in hub_cache_dir

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    # create_connection's timeout does not cover the DNS lookup, which can stall for long on some
    # networks: resolve in a worker thread and give up after `timeout`.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        addresses = pool.submit(socket.getaddrinfo, host, 443, type=socket.SOCK_STREAM).result(
            timeout=timeout
        )
        family, kind, proto, _, address = addresses[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
        return True
    except (OSError, FutureTimeout, IndexError):
        return False
    finally:
        pool.shutdown(wait=False)


def missing_weights_message(what: str, repo_id: str, files: str, fix: str) -> str:
    return (
        f"{what} weights are not available offline.\n"
        f"  missing : {files} from the Hugging Face repo '{repo_id}'\n"
        f"  looked in: {hub_cache_dir()} (set HF_HOME or HF_HUB_CACHE to use another cache)\n"
        f"  fix     : run `{fix}` on a machine with internet (then copy the cache here), "
        "point the config at a local copy, or use the tiny random models (config field "
        "profile: smoke)."
    )


def fetch_hub_file(
    repo_id: str, filenames: tuple[str, ...], allow_download: bool, what: str, fix: str
) -> Path:
    """Return the local path of the first of `filenames` in `repo_id`: from the cache, else
    downloaded."""
    # lazy, as in hub_cache_dir
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError):
            continue
    if allow_download and hub_reachable():
        last_error: Exception | None = None
        for name in filenames:
            try:
                return Path(hf_hub_download(repo_id, name))
            except EntryNotFoundError as error:  # try the next file name
                last_error = error
        raise WeightsMissingError(f"none of {filenames} exist in '{repo_id}': {last_error}")
    raise WeightsMissingError(missing_weights_message(what, repo_id, " or ".join(filenames), fix))
