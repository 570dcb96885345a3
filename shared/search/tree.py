"""Search trees of a whole batch of games as preallocated arrays.

Node 0 of every tree is its root; a node's children are created in increasing index
order, so a parent always has a smaller index than its children. Statistics live on
edges (`[B, N, A]`), seen from the side to move at the edge's parent node: the PUCT
rule then maximises them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

NO_CHILD = 0  # node 0 is always a root, never a child, so 0 can mark "no child yet"


@dataclass
class Tree:
    # per edge [B, N, A]
    children: np.ndarray  # int32: child node index, NO_CHILD if not created
    prior: np.ndarray  # float32: policy prior (root: with exploration noise)
    edge_visits: np.ndarray  # int32
    edge_value: np.ndarray  # float32: sum of values from the parent's side to move
    legal: np.ndarray  # bool
    # per node [B, N]
    boards: np.ndarray  # int8 [B, N, H, W]: position, side-to-move relative
    node_value: np.ndarray  # float32: network value from the node's side to move
    expanded: np.ndarray  # bool: evaluated, priors set
    terminal: np.ndarray  # bool: game over at this node
    terminal_value: np.ndarray  # float32: outcome from the node's side to move
    parent: np.ndarray  # int32
    depth: np.ndarray  # int32: root is 0
    # per tree [B]
    next_free: np.ndarray  # int32: first unused node index

    @classmethod
    def allocate(cls, batch: int, nodes: int, actions: int, board_shape: tuple[int, int]) -> "Tree":
        e, n = (batch, nodes, actions), (batch, nodes)
        return cls(
            children=np.zeros(e, np.int32),
            prior=np.zeros(e, np.float32),
            edge_visits=np.zeros(e, np.int32),
            edge_value=np.zeros(e, np.float32),
            legal=np.zeros(e, bool),
            boards=np.zeros((*n, *board_shape), np.int8),
            node_value=np.zeros(n, np.float32),
            expanded=np.zeros(n, bool),
            terminal=np.zeros(n, bool),
            terminal_value=np.zeros(n, np.float32),
            parent=np.zeros(n, np.int32),
            depth=np.zeros(n, np.int32),
            next_free=np.ones(batch, np.int32),
        )

    def node_arrays(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "next_free"]

    def reset(self, slots: np.ndarray, boards: np.ndarray) -> None:
        """Fresh trees in `slots` with `boards` as their (unexpanded) roots."""
        for name in self.node_arrays():
            getattr(self, name)[slots] = 0
        self.boards[slots, 0] = boards
        self.next_free[slots] = 1

    def reroot(self, slots: np.ndarray, new_roots: np.ndarray) -> None:
        """Keep only the subtree under `new_roots` (one per slot), moved to the front so
        it starts at node 0; everything else is cleared. Vectorised over slots."""
        m, n = len(slots), self.parent.shape[1]
        ar = np.arange(n)
        depth = self.depth[slots]
        root_depth = depth[np.arange(m), new_roots]
        dist = depth - root_depth[:, None]
        used = (ar < self.next_free[slots][:, None]) & (dist >= 0)
        dist = np.where(used, dist, 0)
        # Binary lifting: walk each node `dist` steps up; it is in the subtree iff it
        # lands on the new root.
        node = np.broadcast_to(ar, (m, n)).copy()
        jump = self.parent[slots]
        bit = 0
        while np.any(dist >> bit):
            step = used & ((dist >> bit) & 1).astype(bool)
            node = np.where(step, np.take_along_axis(jump, node, 1), node)
            jump = np.take_along_axis(jump, jump, 1)
            bit += 1
        inside = used & (node == new_roots[:, None])
        count = inside.sum(axis=1)
        order = np.argsort(~inside, axis=1, kind="stable")  # kept nodes first, in order
        new_index = (np.cumsum(inside, axis=1) - 1).astype(np.int32)
        keep = ar < count[:, None]

        for name in self.node_arrays():
            arr = getattr(self, name)[slots]
            idx = order.reshape(order.shape + (1,) * (arr.ndim - 2))
            moved = np.take_along_axis(arr, idx, 1)
            moved[~keep] = 0
            getattr(self, name)[slots] = moved
        # Indices stored in the arrays must follow their nodes.
        children = self.children[slots]
        children = np.where(
            children > 0, np.take_along_axis(new_index, children.reshape(m, -1), 1).reshape(children.shape), 0
        )
        self.children[slots] = children
        parent = np.take_along_axis(new_index, self.parent[slots], 1)
        parent[:, 0] = 0
        self.parent[slots] = np.where(keep, parent, 0)
        self.depth[slots] = np.where(keep, self.depth[slots] - root_depth[:, None], 0)
        self.next_free[slots] = count
