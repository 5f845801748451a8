"""What an actor had in flight when its process died, so that a retried call can tell a poison bucket
from the buckets that died beside it, and an actor that dies while starting is given up on.

Markers live under `_running/` in the output folder (the driver clears it when a run starts):
- `bucket-NNNNN.json` while a bucket's chains run: {"alone": false} for a first try. A retried call
  that finds one knows the bucket was in flight when a worker died: it runs it again as the actor's
  only suspect ({"alone": true}; other buckets go on beside it, other suspects wait). A bucket found
  with {"alone": true} died as the only suspect: it holds the poison, and its unfinished chains are
  recorded as `worker_failed` without running them (a rerun tries them again).
- `actors/ACTOR_ID.json` counts the starts of one actor (Ray restarts a dead actor under the same
  id) until its engine is ready: an engine that kills its process while loading (out of memory, a
  bad model) is given up on after MAX_STARTS tries, with the cause, instead of restarted for ever.
"""
from __future__ import annotations

import json

from common import storage
from evol.output import remove_file
from evol.resume import bucket_file

RUNNING = "_running"
MAX_STARTS = 3
FIRST, SUSPECT, POISON = "first", "suspect", "poison"


class ActorStartFailed(RuntimeError):
    """The actor's process died MAX_STARTS times before its engine was ready."""


class InFlight:
    def __init__(self, out: str):
        self.root = storage.join(out, RUNNING)

    def _bucket(self, bucket: int) -> str:
        return storage.join(self.root, bucket_file(bucket).replace(".parquet", ".json"))

    def state(self, bucket: int) -> str:
        """FIRST (never started in this run), SUSPECT (in flight when a worker died) or POISON (died
        again as the only suspect)."""
        path = self._bucket(bucket)
        if not storage.exists(path):
            return FIRST
        return POISON if json.loads(storage.read_text(path))["alone"] else SUSPECT

    def start(self, bucket: int, alone: bool) -> None:
        storage.write_json(self._bucket(bucket), {"alone": alone})

    def finish(self, bucket: int) -> None:
        remove_file(self._bucket(bucket))

    def actor_starting(self, actor_id: str, what: str) -> None:
        """Count this start; raise ActorStartFailed when the earlier MAX_STARTS ones all died."""
        path = storage.join(self.root, "actors", f"{actor_id}.json")
        starts = json.loads(storage.read_text(path))["starts"] if storage.exists(path) else 0
        if starts >= MAX_STARTS:
            raise ActorStartFailed(f"the evolve actor's process died {starts} times while starting ({what}), "
                                   "without a Python error: out of memory or a crash in native code; see the "
                                   "actor's log in the Ray session's logs folder")
        storage.write_json(path, {"starts": starts + 1})

    def actor_ready(self, actor_id: str) -> None:
        remove_file(storage.join(self.root, "actors", f"{actor_id}.json"))

    def clear(self) -> None:
        storage.delete_dir(self.root)
