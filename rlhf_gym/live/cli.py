"""``rlhf-gym label``: answer the preference store's pending queries in the terminal or a local web page.

Examples::

    rlhf-gym label --store run/preferences.db --import pairs.jsonl   # queue pairs, then label them here
    rlhf-gym label --store run/preferences.db --resume               # carry on after quitting or a crash
    rlhf-gym label --store run/preferences.db --web --port 8765      # label in a browser on this machine
    rlhf-gym label --store run/preferences.db --follow               # keep answering while a trainer asks
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlhf_gym.errors import ConfigError, PreferenceStoreError, RLHFGymError
from rlhf_gym.live.visible import visible
from rlhf_gym.preference_store import PreferenceStore, check_query, iter_jsonl

DEFAULT_STORE_ENV = "RLHF_GYM_STORE"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from rlhf_gym.live.provider import default_annotator

    parser.add_argument("--store", default=os.environ.get(DEFAULT_STORE_ENV, "preferences.db"),
                        help=f"the preference store (SQLite file) holding the queue; default from ${DEFAULT_STORE_ENV}")
    parser.add_argument("--web", action="store_true",
                        help="serve a labelling page on this machine instead of asking in the terminal")
    parser.add_argument("--port", type=int, default=8765, help="port of the --web page (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address of the --web page; only 127.0.0.1 or localhost are allowed")
    parser.add_argument("--resume", action="store_true",
                        help="continue an existing store where you stopped (fails if the store does not exist); "
                             "answered queries are never asked again")
    parser.add_argument("--annotator", default=default_annotator(), help="your id, stored with every answer")
    parser.add_argument("--mode", choices=["any", "compare", "rating"], default="any",
                        help="which queries to ask: pairs, ratings, or both")
    parser.add_argument("--scale", type=int, default=5,
                        help="rating scale (1..SCALE) for rating queries queued with --import")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="seconds per question in the terminal; an unanswered question stays queued")
    parser.add_argument("--follow", action="store_true",
                        help="in the terminal, wait for new queries when the queue is empty (for live training) "
                             "instead of exiting; q + Enter or Ctrl-C stops and gives back the query on screen")
    parser.add_argument("--import", dest="import_file", metavar="FILE", default=None,
                        help="queue queries from a JSONL file first: prompt + completion_a + completion_b per line "
                             "(a pair), or prompt + completion (a rating)")


def run(args: argparse.Namespace) -> int:
    """Open the store, queue any ``--import`` file, then label in the terminal or serve the web page.

    Bad input (options, the import file, a damaged store, a port in use) prints one ``error:`` line and returns 2.
    """
    try:
        return _run(args)
    except RLHFGymError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from rlhf_gym.live.terminal import TerminalLabeler, require_terminal
    from rlhf_gym.live.web import WebLabelServer, check_local_host

    path = Path(args.store)
    check_local_host(args.host)
    if args.time_limit is not None and args.time_limit <= 0:
        raise ConfigError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    if args.follow and args.web:
        raise ConfigError("--follow is for the terminal; the --web page always waits for new queries")
    if args.resume and not path.is_file():
        raise ConfigError(f"nothing to resume: there is no preference store at {str(path)!r}; check --store")
    if args.import_file:
        import_path = Path(args.import_file)
        if not import_path.is_file():
            what = "is a folder" if import_path.is_dir() else "does not exist"
            raise PreferenceStoreError(f"--import file {args.import_file!r} {what}; give a JSONL file of queries")
    if not args.web:
        require_terminal()  # before creating anything, so a pipe fails fast
    kind = None if args.mode == "any" else args.mode
    with PreferenceStore(path) as store:
        store.verify()  # a damaged store fails here, before anyone labels into it
        if args.import_file:
            added, repeated = queue_file(store, args.import_file, scale=args.scale, requested_by=args.annotator)
            print(visible(f"queued {added} new queries from {args.import_file} ({repeated} were asked before)"))
        stats = store.stats()
        mine = stats["annotators"].get(args.annotator, 0)
        print(visible(f"store {store.location}: {stats['answered']} answered ({mine} by {args.annotator}), "
                      f"{stats['pending']} pending"))
        if args.web:
            server = WebLabelServer(store, annotator=args.annotator, host=args.host, port=args.port, kind=kind)
            print(f"labelling page: {server.url}\n(Ctrl-C stops the server; every answer is already saved)",
                  flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                print("stopped")
            finally:
                server.stop()
            return 0
        labeler = TerminalLabeler(store, annotator=args.annotator, kind=kind, time_limit=args.time_limit,
                                  follow=args.follow)
        try:
            summary = labeler.run()
        except KeyboardInterrupt:
            print("\ninterrupted; every answer given is saved. Continue with --resume.")
            return 130
        stats = store.stats()
        print(visible(f"{len(summary.answered)} answered this session, {stats['pending']} still pending"
                      + (f"; continue with `rlhf-gym label --store {store.location} --resume`"
                         if stats["pending"] else "")))
    return 0


def queue_file(store: PreferenceStore, path: str | os.PathLike[str], *, scale: int = 5,
               requested_by: str = "label") -> tuple[int, int]:
    """Queue the queries of a JSONL file (pairs or ratings); returns (new, asked before)."""
    rows = []
    for lineno, rec in enumerate(iter_jsonl(path), 1):
        if "completion_a" in rec or "completion_b" in rec:
            missing = [c for c in ("prompt", "completion_a", "completion_b") if not isinstance(rec.get(c), str)]
            row = {"prompt": rec.get("prompt"), "completion_a": rec.get("completion_a"),
                   "completion_b": rec.get("completion_b")}
        else:
            missing = [c for c in ("prompt", "completion") if not isinstance(rec.get(c), str)]
            row = {"prompt": rec.get("prompt"), "completion_a": rec.get("completion"), "scale": scale}
        if missing:
            raise PreferenceStoreError(
                f"{path}:{lineno} lacks text for {', '.join(missing)} (found {', '.join(rec) or 'nothing'}); each "
                f"line needs prompt, completion_a, completion_b (a pair) or prompt, completion (a rating)")
        try:
            check_query(row)
        except ValueError as exc:
            raise PreferenceStoreError(f"{path}:{lineno}: {exc}") from None
        rows.append(row)
    ids = store.add_queries(rows, requested_by=requested_by)
    added = sum(1 for i in ids if i is not None)
    return added, len(ids) - added


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf_gym.live.cli``: the same as ``rlhf-gym label``, without loading the other subcommands."""
    parser = argparse.ArgumentParser(prog="rlhf-gym label", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    configure_parser(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
