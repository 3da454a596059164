"""Where `on: any` steps run (matrix cells spread over a fleet): the next free node takes the next step.

No fixed lanes: a step goes to the node running the fewest placed steps (the head first among equals),
at most `per_node` at once on a node. A step that failed on a node is re-queued (within its retry
bound) and prefers another node; a node that is out of the fleet or unreachable takes none.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence


class Placement:
    """The scheduler's book of placed steps: which node runs which, and which nodes each step should avoid."""

    def __init__(self, nodes: Sequence[str], per_node: int | None) -> None:
        self.nodes = list(nodes)
        self.per_node = per_node
        self.running: dict[str, str] = {}  # step id -> node
        self.avoid: dict[str, set[str]] = {}  # step id -> nodes it failed on
        self.requeued: Counter[str] = Counter()

    def free_node(self, step_id: str, gone: Collection[str]) -> str | None:
        """The node the step should start on now, or None while every node that may take it is full."""
        load = Counter(self.running.values())
        open_nodes = [n for n in self.nodes if n not in gone and (self.per_node is None or load[n] < self.per_node)]
        fresh = [n for n in open_nodes if n not in self.avoid.get(step_id, ())]
        pool = fresh or open_nodes
        return min(pool, key=lambda n: (load[n], self.nodes.index(n))) if pool else None

    def take(self, step_id: str, node: str) -> None:
        self.running[step_id] = node

    def release(self, step_id: str) -> str | None:
        return self.running.pop(step_id, None)

    def requeue(self, step_id: str, failed_on: str) -> None:
        """The step failed on `failed_on` and goes back to the queue, preferring another node."""
        self.avoid.setdefault(step_id, set()).add(failed_on)
        self.requeued[step_id] += 1
