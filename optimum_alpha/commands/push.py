"""``push``: upload a folder saved by ``prune`` (or ``save_pretrained``) to the Hub, e.g. to retry a failed push."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_push_timeout_argument

NAME = "push"
HELP = "upload a saved pruned-model folder to the Hugging Face Hub (retries a failed --push-to-hub)"
DESCRIPTION = (
    "Upload FOLDER, exactly as it is on disk, to the Hub repo REPO (created if needed), as one commit.\n"
    "The model card's load snippet is updated to name REPO. The token comes from `hf auth login` or HF_TOKEN.\n\n"
    "example:\n  optimum-cli alpha-prune push outputs/smollm2-135m-alpha-wanda-50 me/smollm2-135m-wanda-50 --private"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="a folder written by prune or save_pretrained")
    parser.add_argument("repo", metavar="REPO", help="Hub repo id, 'name' or 'owner/name'")
    parser.add_argument("--private", action="store_true", help="create the repo as private (an existing repo keeps "
                        "its visibility)")
    parser.add_argument("--commit-message", default=None, metavar="TEXT",
                        help="message of the upload commit (default: 'Upload pruned model (FOLDER) with optimum-alpha')")
    add_push_timeout_argument(parser, "--timeout")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.hub import check_push_target, push_folder_to_hub

    check_push_target(args.repo)
    url = push_folder_to_hub(args.folder, args.repo, private=args.private or None, commit_message=args.commit_message,
                             timeout=args.push_timeout)
    print(f"pushed {args.folder} to: {url}")
    return 0
