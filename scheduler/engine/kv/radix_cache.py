"""The radix KV index: a prefix tree over token ids whose nodes hold KV slot numbers.

A request's prompt is matched against the tree at admission; the matched prefix's KV is reused
(no recompute) and locked while the request runs. When a request finishes (or is retracted or
aborted), its computed context is inserted, so later requests sharing a prefix find it. Unlocked
leaves are evicted least recently used first when the allocator runs short.

Accounting: every slot is either free (allocator), in the tree (`size`; of which `evictable`
are unlocked), or owned by a running request beyond its matched prefix.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    key: list[int]                 # token ids on the edge from the parent
    slots: list[int]               # their KV slots, same length
    parent: "Node | None"
    children: dict[int, "Node"] = field(default_factory=dict)
    lock: int = 0                  # running requests whose matched prefix passes through here
    last_used: int = 0


def _common_prefix(key: list[int], ids: list[int], start: int) -> int:
    """Length of the common prefix of key and ids[start:], by slice comparisons (C speed) and
    bisection: prompts run to thousands of tokens, and a burst of requests sharing one is matched
    while the GPU waits for the step."""
    n = min(len(key), len(ids) - start)
    if (key if n == len(key) else key[:n]) == ids[start : start + n]:
        return n
    lo, hi = 0, n  # key[:lo] == ids[start:start + lo] and key[:hi] != ids[start:start + hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if key[lo:mid] == ids[start + lo : start + mid]:
            lo = mid
        else:
            hi = mid
    return lo


class RadixCache:
    def __init__(self) -> None:
        self.root = Node(key=[], slots=[], parent=None, lock=1)
        self.size = 0          # slots held by the tree
        self.locked_size = 0   # of which in locked nodes
        self._clock = itertools.count(1)

    @property
    def evictable(self) -> int:
        return self.size - self.locked_size

    # ------------------------------------------------------------ lookups

    def match(self, ids: list[int], end: int | None = None) -> tuple[list[int], Node]:
        """Longest cached prefix of ids[:end]: its slots (a new list) and the node where it ends."""
        if end is not None and end < len(ids):
            ids = ids[:end]
        node, slots, i = self.root, [], 0
        now = next(self._clock)
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common_prefix(child.key, ids, i)
            if n < len(child.key):
                child = self._split(child, n)
            slots.extend(child.slots)
            child.last_used = now
            node, i = child, i + n
        return slots, node

    def insert(self, ids: list[int], slots: list[int]) -> int:
        """Add ids -> slots; return how many leading ids were already cached (the caller still
        owns slots[:that] and frees whichever of them the tree does not hold)."""
        assert len(ids) == len(slots)
        node, i = self.root, 0
        now = next(self._clock)
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                leaf = Node(key=list(ids[i:]), slots=list(slots[i:]), parent=node, last_used=now)
                node.children[ids[i]] = leaf
                self.size += len(leaf.key)
                return i
            n = _common_prefix(child.key, ids, i)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_used = now
            node, i = child, i + n
        return i

    def extend(self, node: Node, ids: list[int], slots: list[int]) -> Node | None:
        """Hang ids -> slots below node as a new leaf: node's path then ids. A running request
        grows its own cached path this way in O(len(ids)), with no walk from the root. None
        (and nothing changed) if ids is empty or the tree already continues node with ids[0]."""
        assert len(ids) == len(slots)
        if not ids or ids[0] in node.children:
            return None
        leaf = Node(key=list(ids), slots=list(slots), parent=node, last_used=next(self._clock))
        node.children[ids[0]] = leaf
        self.size += len(leaf.key)
        return leaf

    def _split(self, node: Node, n: int) -> Node:
        """Cut node's edge after n tokens; return the new upper part."""
        upper = Node(key=node.key[:n], slots=node.slots[:n], parent=node.parent, lock=node.lock, last_used=node.last_used)
        node.parent.children[upper.key[0]] = upper
        node.key, node.slots, node.parent = node.key[n:], node.slots[n:], upper
        upper.children[node.key[0]] = node
        return upper

    # ------------------------------------------------------------ locks

    def lock(self, node: Node) -> None:
        while node is not self.root:
            if node.lock == 0:
                self.locked_size += len(node.key)
            node.lock += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        while node is not self.root:
            node.lock -= 1
            assert node.lock >= 0, "radix cache lock underflow"
            if node.lock == 0:
                self.locked_size -= len(node.key)
            node = node.parent

    # ------------------------------------------------------------ eviction

    def evict(self, n: int) -> list[int]:
        """Free at least n slots (fewer if not enough are evictable), LRU leaves first."""
        heap = [(leaf.last_used, id(leaf), leaf) for leaf in self._leaves() if leaf.lock == 0]
        heapq.heapify(heap)
        freed: list[int] = []
        while heap and len(freed) < n:
            _, _, leaf = heapq.heappop(heap)
            freed.extend(leaf.slots)
            self.size -= len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))
        return freed

    def _leaves(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node is not self.root:
                out.append(node)
        return out

    def all_slots(self) -> list[int]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.extend(node.slots)
            stack.extend(node.children.values())
        return out
