"""Download the GPT-2-tokenized FineWeb10B shards from the Hugging Face dataset kjj0/fineweb10B-gpt2.

    python data/cached_fineweb10B.py [N] [--dir DIR] [--timeout SECONDS]

Fetches fineweb_val_000000.bin and the first N train shards fineweb_train_000001.bin ..
(N = 1..103, default 8; each shard is 100M tokens, ~200 MB; 8 cover the speedrun's ~0.7B training
tokens) into DIR (default data/fineweb10B/), with huggingface_hub: progress bars, and an interrupted
download resumes where it stopped when rerun.

A shard already present with a valid header and a size matching it (data/shards.py) is skipped
without touching the network, so reruns are free. Every downloaded shard is validated the same way.
Before downloading anything the Hub is probed once with a short timeout: offline (or with
HF_HUB_OFFLINE=1) the script prints one message and exits with status 1 within seconds, instead of
huggingface_hub's retry loop. Mirrors: set HF_ENDPOINT.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # so `python data/cached_fineweb10B.py` can import the `data` package
    sys.path.insert(0, ROOT)

from data.net import describe, unreachable_reason  # noqa: E402
from data.shards import ShardError, read_header  # noqa: E402

REPO_ID = "kjj0/fineweb10B-gpt2"
NUM_TRAIN_SHARDS = 103
DEFAULT_NUM_TRAIN = 8
DEFAULT_DIR = os.path.join(ROOT, "data", "fineweb10B")
DEFAULT_TIMEOUT = 5.0


class HubUnreachable(RuntimeError):
    """The Hugging Face Hub (or HF_ENDPOINT) cannot be reached, or offline mode is on."""


def shard_filenames(num_train):
    """The val shard, then train shards 1..num_train, as named in the dataset repo."""
    if isinstance(num_train, bool) or not isinstance(num_train, int) or not 0 <= num_train <= NUM_TRAIN_SHARDS:
        raise ValueError(f"number of train shards must be an integer in [0, {NUM_TRAIN_SHARDS}], got {num_train!r}")
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, num_train + 1)]


def shard_problem(path):
    """None if `path` is a complete, valid shard; otherwise why not (missing, truncated, ...)."""
    try:
        read_header(path)
        return None
    except ShardError as e:
        return str(e)


def _hub_help(endpoint):
    return (f"The machine appears to be offline or {endpoint} is unreachable. Connect to the internet "
            "(or set HF_ENDPOINT to a reachable mirror) and rerun the same command: shards already "
            "downloaded are kept and a partial download resumes. For an offline run, build the "
            "Shakespeare data instead: python data/shakespeare.py")


def check_hub_reachable(url, timeout=DEFAULT_TIMEOUT):
    """Raise HubUnreachable unless `url` answers an HTTP HEAD within ~`timeout` seconds.

    Any HTTP status counts as reachable (errors like 404 are reported by the download itself).
    Uses huggingface_hub's own HTTP session (same proxies/certificates) without its retries.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        raise HubUnreachable("HF_HUB_OFFLINE is set, so huggingface_hub will not download. "
                             "Unset HF_HUB_OFFLINE and rerun with network access.")
    reason = unreachable_reason(lambda: get_session().head(url, timeout=timeout, follow_redirects=False), timeout)
    if reason is not None:
        raise HubUnreachable(f"cannot reach the Hugging Face Hub ({reason}). "
                             f"{_hub_help(constants.ENDPOINT)}")


def download(num_train=DEFAULT_NUM_TRAIN, local_dir=DEFAULT_DIR, timeout=DEFAULT_TIMEOUT, log=print):
    """Make `local_dir` hold valid copies of the val shard and the first `num_train` train shards.

    Returns {"skipped": [names already valid], "downloaded": [names fetched]}. Raises HubUnreachable
    when the Hub cannot be reached (quickly), ShardError if a downloaded shard is invalid, ValueError
    for bad arguments. Shards already valid are never re-fetched and need no network.
    """
    names = shard_filenames(num_train)
    todo, skipped = [], []
    for name in names:
        path = os.path.join(local_dir, name)
        problem = shard_problem(path)
        if problem is None:
            skipped.append(name)
        else:
            # an existing but invalid file must be forced: huggingface_hub may trust its own metadata
            todo.append((name, os.path.exists(path)))
            if os.path.exists(path):
                log(f"{name}: present but invalid, will download again ({problem})")
    if skipped:
        log(f"{len(skipped)} of {len(names)} shards already present and valid in {local_dir}; skipping them")
    if not todo:
        return {"skipped": skipped, "downloaded": []}

    from huggingface_hub import hf_hub_download, hf_hub_url

    try:
        check_hub_reachable(hf_hub_url(REPO_ID, todo[0][0], repo_type="dataset"), timeout)
    except HubUnreachable as e:
        missing = ", ".join(name for name, _ in todo[:3]) + (", ..." if len(todo) > 3 else "")
        raise HubUnreachable(f"cannot download {len(todo)} shard(s) ({missing}) from {REPO_ID}: {e}") from None
    os.makedirs(local_dir, exist_ok=True)
    downloaded = []
    for i, (name, force) in enumerate(todo):
        log(f"[{i + 1}/{len(todo)}] {name}")
        try:
            path = hf_hub_download(repo_id=REPO_ID, filename=name, repo_type="dataset", local_dir=local_dir,
                                   etag_timeout=timeout, force_download=force)
        except Exception as e:  # the Hub went away mid-run, file missing upstream, disk full, ...
            raise HubUnreachable(f"downloading {name} failed ({describe(e)}). Check the connection "
                                 "(or HF_ENDPOINT) and rerun the same command to resume.") from None
        problem = shard_problem(path)
        if problem is not None:
            raise ShardError(f"downloaded {name} is not a valid shard: {problem}. "
                             "Rerun the same command to download it again.")
        downloaded.append(name)
    return {"skipped": skipped, "downloaded": downloaded}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("num_train", nargs="?", type=int, default=DEFAULT_NUM_TRAIN, metavar="N",
                        help=f"number of train shards, 0..{NUM_TRAIN_SHARDS} (default {DEFAULT_NUM_TRAIN})")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="download directory (default data/fineweb10B/)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the Hub before giving up (default {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(argv)
    if not 0 <= args.num_train <= NUM_TRAIN_SHARDS:
        parser.error(f"N must be in 0..{NUM_TRAIN_SHARDS}, got {args.num_train}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    try:
        result = download(args.num_train, args.dir, args.timeout)
    except (HubUnreachable, ShardError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"done: {len(result['downloaded'])} downloaded, {len(result['skipped'])} already present, in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
