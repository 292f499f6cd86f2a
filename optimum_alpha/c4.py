"""Which C4 ``calibration_dataset="c4"`` means: the references' training shard when the Hub can be reached,
the 200-document sample shipped in the package otherwise (offline machines, CI, ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Mapping
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

C4_REPO = "allenai/c4"
C4_SHARD = "en/c4-train.00000-of-01024.json.gz"  # the shard SparseGPT, Wanda and AlphaPruning calibrate on
HUB_LABEL = f"c4 ({C4_REPO} {C4_SHARD})"
SHIPPED_LABEL = "c4 (shipped 200-document sample)"
_TRUE = {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the Hub endpoint opens within ``timeout`` seconds."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def use_hub_c4(environ: Mapping[str, str] | None = None) -> bool:
    """The decision: the Hub shard unless ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set or the Hub is
    unreachable."""
    env = os.environ if environ is None else environ
    if any(env.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    return hub_reachable()


def c4_source() -> tuple[Any, str]:
    """(source for :func:`optimum_alpha.data.load_texts`, label for the log and the report)."""
    if use_hub_c4():
        try:
            from datasets import load_dataset

            shard = load_dataset(C4_REPO, data_files={"train": C4_SHARD}, split="train")
            logger.info("Calibration C4: %s", HUB_LABEL)
            return shard, HUB_LABEL
        except Exception as err:  # noqa: BLE001 - any download failure falls back, and says so
            logger.warning("Could not load %s (%s); using the shipped C4 sample instead.", HUB_LABEL, err)
    else:
        logger.info("Calibration C4: %s (the Hub is offline or unreachable)", SHIPPED_LABEL)
    return "c4", SHIPPED_LABEL
