"""Where `on: any` steps run (matrix cells spread over a fleet): the next free node takes the next cell.

No fixed lanes: a cell goes to the node running the fewest placed cells (the head first among equals),
at most `per_node` at once on a node. The steps of one cell (a matrix group's job, gate, copy) share
its node. A step that failed on a node is re-queued (within its retry bound) and prefers another node;
a node that is out of the fleet or unreachable takes none.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence


class Placement:
    """The scheduler's book of placed steps: which node runs which cell, and which nodes a cell should avoid.

    A key names a cell (`group[cell]`), or a single step placed on its own (its id).
    """

    def __init__(self, nodes: Sequence[str], per_node: int | None) -> None:
        self.nodes = list(nodes)
        self.per_node = per_node
        self.running: dict[str, tuple[str, str]] = {}  # step id -> (key, node)
        self.home: dict[str, str] = {}  # key -> the node its steps go to
        self.avoid: dict[str, set[str]] = {}  # key -> nodes it failed on
        self.requeued: Counter[str] = Counter()  # step id -> times re-queued

    def free_node(self, key: str, gone: Collection[str]) -> str | None:
        """The node a step of `key` should start on now, or None while every node that may take it is full."""
        home = self.home.get(key)
        if home is not None and home not in gone:
            return home  # the cell's other steps are there (its slot is taken already)
        load = Counter(node for _, node in set(self.running.values()))
        open_nodes = [n for n in self.nodes if n not in gone and (self.per_node is None or load[n] < self.per_node)]
        fresh = [n for n in open_nodes if n not in self.avoid.get(key, ())]
        pool = fresh or open_nodes
        return min(pool, key=lambda n: (load[n], self.nodes.index(n))) if pool else None

    def take(self, step_id: str, key: str, node: str) -> None:
        self.running[step_id] = (key, node)
        self.home[key] = node

    def release(self, step_id: str) -> None:
        self.running.pop(step_id, None)

    def requeue(self, step_id: str, failed_on: str) -> None:
        """The step failed on `failed_on` and goes back to the queue: its cell may move, preferably elsewhere.

        Called while the step still holds its place (the scheduler releases it when it hears the step ended)."""
        key = self.running[step_id][0] if step_id in self.running else step_id
        self.avoid.setdefault(key, set()).add(failed_on)
        self.home.pop(key, None)
        self.requeued[step_id] += 1
