"""Property tests of the radix KV index (scheduler/engine/kv/radix_cache.py) against a brute-force model.

The model keeps, for every cached token prefix (a tuple of token ids), its KV slot, how many
active locks cover it, and when a match or insert last touched it. Tokens come from a tiny
alphabet (0..3) so prefixes collide and edges split all the time. Hypothesis drives random
sequences of match / match+lock / insert / extend / unlock / evict and compares every answer with the
model; after every step the tree's structure (walked read-only) must hold exactly the model's
prefixes, slots and locks, with consistent sizes.

Eviction order, in model terms: repeatedly drop the unlocked cached prefix that has no cached
extension (a leaf token) and was touched least recently. The tree evicts whole nodes (a node's
tokens always share their last touch), so it may free a few tokens more than asked, but only
the rest of the node that crossed the target.
"""

from __future__ import annotations

import collections

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from litelang.scheduler.engine.kv.radix_cache import RadixCache

TOKENS = st.lists(st.integers(0, 3), max_size=9)


class RadixModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cache = RadixCache()
        self.slot_of: dict[tuple[int, ...], int] = {}   # every cached prefix -> its slot
        self.locks: collections.Counter = collections.Counter()  # prefix -> active locks covering it
        self.touched: dict[tuple[int, ...], int] = {}   # prefix -> model time of its last match/insert
        self.clock = 0
        self.handles: list[tuple[object, tuple[int, ...]]] = []  # (node, locked path) per active lock
        self.free_slots = list(range(32))               # slot numbers not held by the tree (reused)
        self.next_slot = 32

    # ------------------------------------------------------------ model helpers

    def cached_len(self, ids: list[int]) -> int:
        n = 0
        while n < len(ids) and tuple(ids[: n + 1]) in self.slot_of:
            n += 1
        return n

    def new_slot(self) -> int:
        if self.free_slots:
            return self.free_slots.pop()
        self.next_slot += 1
        return self.next_slot - 1

    def touch(self, ids: list[int], n: int) -> None:
        self.clock += 1
        for k in range(1, n + 1):
            self.touched[tuple(ids[:k])] = self.clock

    def eviction_order(self) -> list[tuple[int, ...]]:
        """Every evictable prefix, in the order LRU leaf eviction must free them."""
        alive = {p for p in self.slot_of if self.locks[p] == 0}
        children = collections.Counter(p[:-1] for p in self.slot_of)
        order = []
        leaves = {p for p in alive if children[p] == 0}
        while leaves:
            p = min(leaves, key=lambda q: self.touched[q])
            # a leaf's last touch is unique among leaves (an op touches a single root path)
            assert sum(self.touched[q] == self.touched[p] for q in leaves) == 1
            leaves.remove(p)
            order.append(p)
            parent = p[:-1]
            children[parent] -= 1
            if parent and children[parent] == 0 and parent in alive:
                leaves.add(parent)
        return order

    # ------------------------------------------------------------ rules

    @rule(ids=TOKENS)
    def insert(self, ids: list[int]) -> None:
        slots = [self.new_slot() for _ in ids]
        expected = self.cached_len(ids)
        present = self.cache.insert(list(ids), list(slots))
        assert present == expected, f"insert({ids}) said {present} tokens were cached, model says {expected}"
        for k in range(present, len(ids)):
            self.slot_of[tuple(ids[: k + 1])] = slots[k]
        self.free_slots.extend(slots[:present])  # the caller keeps (and frees) the duplicates
        if ids:
            self.touch(ids, len(ids))

    @rule(ids=TOKENS, lock=st.booleans(), end=st.none() | st.integers(0, 10))
    def match(self, ids: list[int], lock: bool, end: int | None) -> None:
        full = list(ids)
        ids = ids if end is None else ids[:end]  # match(ids, end) looks at ids[:end] only
        n = self.cached_len(ids)
        slots, node = self.cache.match(full, end=end)
        expected = [self.slot_of[tuple(ids[: k + 1])] for k in range(n)]
        assert slots == expected, f"match({ids}) gave slots {slots}, model says {expected} (longest cached prefix {n})"
        if n:
            self.touch(ids, n)
        if lock:
            self.cache.lock(node)
            path = tuple(ids[:n])
            self.handles.append((node, path))
            for k in range(1, n + 1):
                self.locks[path[:k]] += 1

    @precondition(lambda self: self.handles)
    @rule(which=st.integers(0, 1 << 16), ids=TOKENS)
    def extend(self, which: int, ids: list[int]) -> None:
        """A running request growing its locked path: hang ids below it, then move its lock to
        the new leaf (as the engine does)."""
        i = which % len(self.handles)
        node, path = self.handles[i]
        slots = [self.new_slot() for _ in ids]
        leaf = self.cache.extend(node, list(ids), list(slots))
        if not ids or path + (ids[0],) in self.slot_of:
            assert leaf is None, f"extend({path} + {ids}) hung a leaf where the tree already continues"
            self.free_slots.extend(slots)
            return
        assert leaf is not None, f"extend({path} + {ids}) refused with nothing cached past the path"
        self.clock += 1
        for k in range(len(ids)):
            full = path + tuple(ids[: k + 1])
            self.slot_of[full], self.touched[full] = slots[k], self.clock
        self.cache.lock(leaf)
        self.cache.unlock(node)
        new_path = path + tuple(ids)
        self.handles[i] = (leaf, new_path)
        for k in range(len(path) + 1, len(new_path) + 1):
            self.locks[new_path[:k]] += 1

    @precondition(lambda self: self.handles)
    @rule(which=st.integers(0, 1 << 16))
    def unlock(self, which: int) -> None:
        node, path = self.handles.pop(which % len(self.handles))
        self.cache.unlock(node)
        for k in range(1, len(path) + 1):
            self.locks[path[:k]] -= 1

    @rule(n=st.integers(0, 12))
    def evict(self, n: int) -> None:
        order = self.eviction_order()
        assert len(order) == self.cache.evictable, "every unlocked cached token must be evictable"
        by_slot = {s: p for p, s in self.slot_of.items()}
        freed = self.cache.evict(n)
        assert len(freed) == len(set(freed)), f"evict freed a slot twice: {freed}"
        assert all(s in by_slot for s in freed), f"evict freed slots the tree did not hold: {freed}"
        gone = [by_slot[s] for s in freed]
        locked = [p for p in gone if self.locks[p]]
        assert not locked, f"evict freed locked prefixes {locked}"
        f = len(freed)
        assert f >= min(n, len(order)), f"evict({n}) freed {f} with {len(order)} evictable"
        assert set(gone) == set(order[:f]), (
            f"evict({n}) freed {sorted(gone)}, LRU order says {order[:f]}"
        )
        if f > n:  # overshoot only to finish the node that crossed the target
            t = self.touched[order[max(n - 1, 0)]]
            assert n > 0 and all(self.touched[p] == t for p in order[n - 1 : f]), (
                f"evict({n}) freed {f} slots: more than the rest of the last node"
            )
        for p in gone:
            del self.slot_of[p]
            del self.touched[p]
        self.free_slots.extend(freed)

    # ------------------------------------------------------------ invariants

    def walk(self):
        """(prefix, slot, node lock) of every token in the tree, read without touching it."""
        out, stack = [], [(self.cache.root, ())]
        while stack:
            node, path = stack.pop()
            assert len(node.key) == len(node.slots)
            for k, (tok, slot) in enumerate(zip(node.key, node.slots)):
                out.append((path + tuple(node.key[: k + 1]), slot, node.lock))
            full = path + tuple(node.key)
            for first, child in node.children.items():
                assert child.parent is node, "child's parent pointer is stale"
                assert child.key and child.key[0] == first, "child keyed under the wrong token"
                stack.append((child, full))
        return out

    @invariant()
    def tree_equals_model(self) -> None:
        tokens = self.walk()
        tree = {p: s for p, s, _ in tokens}
        assert len(tree) == len(tokens), "a prefix appears twice in the tree"
        assert tree == self.slot_of, "the tree's cached prefixes/slots differ from the model"
        locks = {p: lock for p, _, lock in tokens}
        wrong = {p: (locks[p], self.locks[p]) for p in tree if locks[p] != self.locks[p]}
        assert not wrong, f"lock counts (tree, model) differ: {wrong}"
        for p in tree:  # every remaining token's ancestors remain
            assert p[:-1] == () or p[:-1] in tree

    @invariant()
    def sizes(self) -> None:
        locked = sum(1 for p in self.slot_of if self.locks[p] > 0)
        assert self.cache.size == len(self.slot_of)
        assert self.cache.locked_size == locked
        assert self.cache.evictable == len(self.slot_of) - locked
        slots = self.cache.all_slots()
        assert len(slots) == len(set(slots)), f"all_slots has duplicates: {sorted(slots)}"
        assert sorted(slots) == sorted(self.slot_of.values())


RadixModel.TestCase.settings = settings(
    max_examples=400, stateful_step_count=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRadixCache = RadixModel.TestCase


def test_evict_prefers_least_recently_used_leaf() -> None:
    """A concrete case: two branches; the one matched most recently survives a small eviction."""
    c = RadixCache()
    c.insert([1, 2, 3], [10, 11, 12])
    c.insert([1, 2, 4], [20, 21, 22])   # shares [1, 2]: its first two slots stay with the caller
    c.match([1, 2, 3])                  # branch 3 is now more recent than branch 4
    assert c.evict(1) == [22]
    assert c.evict(1) == [12]
    assert sorted(c.evict(10)) == [10, 11]
    assert c.size == 0 and c.all_slots() == []


def test_locked_path_is_never_evicted() -> None:
    c = RadixCache()
    c.insert([0, 1, 2, 3], [0, 1, 2, 3])
    slots, node = c.match([0, 1])
    c.lock(node)
    assert sorted(c.evict(100)) == [2, 3]
    assert c.size == 2 and c.evictable == 0
    assert c.match([0, 1, 2])[0] == [0, 1]
    c.unlock(node)
    assert sorted(c.evict(100)) == [0, 1]
