"""Hugging Face Hub ids as model and tokenizer sources: `microsoft/VibeVoice-1.5B` resolves to the local
directory of its snapshot in the Hub cache, which is then checked exactly like any checkpoint directory.

Offline (`HF_HUB_OFFLINE=1`) the snapshot must already be in the cache (`HF_HUB_CACHE`, else
`$HF_HOME/hub`, else `~/.cache/huggingface/hub`); otherwise `huggingface_hub` downloads what is missing.
Either way every failure is one typed error that names the command to run next.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vvtrt.errors import ModelError

log = logging.getLogger(__name__)

# owner/name as the Hub spells it: one slash, letters, digits, '-', '_', '.'
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# what a VibeVoice checkpoint or a Qwen tokenizer needs (no duplicate .bin / .pt weights)
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
_TRUE = {"1", "on", "yes", "true"}


def is_hub_id(spec) -> bool:
    """Whether `spec` reads as a Hub repository id (`owner/name`) and is not a path that exists here."""
    text = str(spec).strip()
    return bool(_HUB_ID.match(text)) and not Path(text).expanduser().exists()


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` as huggingface_hub reads it (1/on/yes/true), read now rather than at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The Hub cache in use: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def fetch_command(repo_id: str) -> str:
    """The command that puts `repo_id` into the Hub cache."""
    return f"hf download {repo_id}"


def resolve_hub_id(repo_id: str, what: str = "model") -> Path:
    """The local snapshot directory of `repo_id` (from the cache offline, downloaded otherwise); a
    `ModelError` naming the next command when it cannot be had."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline, cache = hub_offline(), hub_cache_dir()
    fetch = fetch_command(repo_id)
    try:
        path = snapshot_download(repo_id, cache_dir=str(cache), local_files_only=offline,
                                 allow_patterns=ALLOW_PATTERNS)
    except GatedRepoError:
        raise ModelError(f"{what} {repo_id} is gated on the Hugging Face Hub: accept its terms on the Hub, "
                         f"log in with `hf auth login`, then run `{fetch}`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelError(f"{what} {repo_id} was not found on the Hugging Face Hub: check the id (e.g. "
                         "microsoft/VibeVoice-1.5B) or pass a local checkpoint directory") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise ModelError(f"{what} {repo_id} is no local directory and not in the Hugging Face cache {cache}, "
                         f"and {why}: fetch it with `{fetch}` (with network access, into the same HF_HUB_CACHE) "
                         "or pass a local checkpoint directory") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(f"could not download {what} {repo_id} ({type(exc).__name__}: {exc}): retry, or fetch "
                         f"it with `{fetch}` and set HF_HUB_OFFLINE=1") from None
    log.info("%s %s resolved to %s", what, repo_id, path)
    return Path(path)


def local_source(spec: str, what: str = "model") -> str:
    """`spec` unchanged, unless it is a Hub id: then the path of its local snapshot."""
    if spec is None or not is_hub_id(spec):
        return spec
    return str(resolve_hub_id(str(spec).strip(), what))
