"""The index columns of sealed segments that are kept in memory: a byte-bounded LRU.

A sealed segment keeps only O(1) state (start, count, size, first and last timestamp) and
reads its `.index` file when a poll needs entries. Loading a whole index once and keeping it
makes the next polls of that segment free of index reads, so the loaded columns (end
positions and timestamps, 16 bytes per message) go here. One cache serves a whole shard
(`system.index_cache_bytes`): memory spent on sealed indexes is bounded by configuration,
whatever the amount of data stored.

A segment whose index alone would take more than a quarter of the cache is never cached
(it is read entry range by entry range instead), so one huge segment cannot flush every
other one out.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

Columns = tuple[np.ndarray, np.ndarray]  # (int64 end positions, uint64 timestamps)


def columns_bytes(columns: Columns) -> int:
    return int(columns[0].nbytes + columns[1].nbytes)


class IndexCache:
    def __init__(self, capacity_bytes: int) -> None:
        assert capacity_bytes >= 0
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[object, Columns] = OrderedDict()
        self._held_bytes = 0
        self.loads = 0  # columns put here (a measure of index reads, for tests and stats)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def admits(self, nbytes: int) -> bool:
        """Whether columns of `nbytes` would be kept."""
        return 0 < nbytes <= self.capacity_bytes // 4

    def get(self, key: object) -> Columns | None:
        columns = self._entries.get(key)
        if columns is not None:
            self._entries.move_to_end(key)
        return columns

    def put(self, key: object, ends: np.ndarray, timestamps: np.ndarray) -> None:
        """Keep `key`'s columns (own copies, so a view never pins a larger buffer), evicting
        the least recently used beyond the capacity; too large ones are not kept."""
        self.discard(key)
        columns = (np.array(ends, dtype=np.int64), np.array(timestamps, dtype=np.uint64))
        nbytes = columns_bytes(columns)
        if not self.admits(nbytes):
            return
        self._entries[key] = columns
        self._held_bytes += nbytes
        self.loads += 1
        while self._held_bytes > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._held_bytes -= columns_bytes(evicted)

    def discard(self, key: object) -> None:
        columns = self._entries.pop(key, None)
        if columns is not None:
            self._held_bytes -= columns_bytes(columns)
