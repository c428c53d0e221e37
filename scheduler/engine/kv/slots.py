"""The engine's view of the worker's KV pool: every slot is free (the allocator), in the radix
cache, or owned by a running request past its matched prefix; KVSlots moves slots between the
three and keeps free + cached + in use == capacity."""

from __future__ import annotations

from litelang.scheduler.engine.kv.allocator import SlotAllocator
from litelang.scheduler.engine.kv.radix_cache import RadixCache
from litelang.scheduler.engine.request import Request


class KVSlots:
    def __init__(self, use_radix_cache: bool, capacity: int = 0):
        self.use_radix_cache = use_radix_cache
        self.reset(capacity)

    def reset(self, capacity: int) -> None:
        """An empty pool (the workers' at connect, or after they failed)."""
        self.allocator = SlotAllocator(capacity)
        self.cache: RadixCache | None = RadixCache() if self.use_radix_cache else None

    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    @property
    def available(self) -> int:
        """Slots that can be handed out now: free, or held only by unlocked cache entries."""
        return self.allocator.num_free + (self.cache.evictable if self.cache else 0)

    def counts(self) -> dict[str, int]:
        free = self.allocator.num_free
        cached = self.cache.size if self.cache else 0
        return {"capacity": self.capacity, "free": free, "cached": cached, "in_use": self.capacity - free - cached}

    def allocate(self, n: int) -> list[int]:
        """n slots, evicting least recently used cache entries when the free list runs short."""
        short = n - self.allocator.num_free
        if short > 0 and self.cache is not None:
            self.allocator.free(self.cache.evict(short))
        return self.allocator.allocate(n)

    def match_prefix(self, r: Request) -> None:
        """Reuse the cached KV of r's longest cached prefix (always computing its last token)."""
        if self.cache is None:
            return
        context = r.context()
        # a prompt being scored is computed in full: every position's logits are needed
        slots, node = self.cache.match(context, end=0 if r.scores_prompt else len(context) - 1)
        self.cache.lock(node)
        r.slots, r.tree_prefix_len, r.tree_node = slots, len(slots), node
        r.cached_tokens = max(r.cached_tokens, min(len(slots), len(r.prompt_ids)))

    def cache_scheduled(self, r: Request) -> None:
        """Put r's scheduled context into the radix cache now, not at finish, so requests
        admitted later (in this step too) share it at once: GPU order makes its KV ready before
        they read it. It hangs below r's own locked path; skipped when another request already
        cached a continuation of that path: the duplicate slots stay r's own until it finishes."""
        if self.cache is None or r.tree_node is None:
            return
        start, end = r.tree_prefix_len, len(r.slots)
        leaf = self.cache.extend(r.tree_node, r.context(start, end), r.slots[start:end])
        if leaf is None:
            return
        self.cache.lock(leaf)
        self.cache.unlock(r.tree_node)
        r.tree_node, r.tree_prefix_len = leaf, end

    def release(self, r: Request) -> None:
        """Hand r's KV to the radix cache (or the free list), keeping no slot twice."""
        if self.cache is None:
            self.allocator.free(r.slots)
        else:
            ids = r.context(0, len(r.slots))
            known = len(ids)
            present = self.cache.insert(ids, r.slots[:known])
            # between the matched prefix and `present`, our slots duplicate KV the tree already has;
            # past `known`, slots of steps still in flight hold KV of tokens never seen here. Both
            # can be reused at once: any new owner writes them in a later step, so after the GPU
            # has finished with them here.
            self.allocator.free(r.slots[r.tree_prefix_len : present] + r.slots[known:])
            if r.tree_node is not None:
                self.cache.unlock(r.tree_node)
        r.slots, r.tree_prefix_len, r.tree_node = [], 0, None

    def check_invariant(self, running: list[Request], full: bool = True) -> None:
        """free + cached + in use == capacity; with `full`, also that every slot is accounted for
        exactly once (O(capacity): tests and LITELANG_CHECK_SLOTS=1, not production idles)."""
        own = [s for r in running for s in r.slots[r.tree_prefix_len :]]
        cached_count = self.cache.size if self.cache else 0
        if not full:
            if self.allocator.num_free + cached_count + len(own) != self.capacity:
                raise AssertionError(
                    f"KV slot leak: {self.allocator.num_free} free + {cached_count} cached + {len(own)} in use "
                    f"!= {self.capacity} capacity"
                )
            return
        cached = self.cache.all_slots() if self.cache else []
        free = self.allocator.free_slots()
        total = len(free) + len(cached) + len(own)
        if total != self.capacity or len(set(free) | set(own) | set(cached)) != self.capacity:
            raise AssertionError(
                f"KV slot leak: {len(free)} free + {len(cached)} cached + {len(own)} in use != {self.capacity} "
                "capacity, or a slot is counted twice"
            )
