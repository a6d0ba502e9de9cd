#!/usr/bin/env python3
"""How many of the account trie's branches the store keeps, by depth, for uniformly random keys.

The store keeps a branch at depth 5 or deeper only when the hash builder sets a bit of its tree
mask (`storage/src/trie/mod.rs`, `is_stored`): a child branch with a branch under it. This
estimates, by Monte Carlo over Poisson-sized subtrees, the share of depth-5 branches kept at a
given number of accounts, and the share of depth-4 branches that would have a kept child (the
bound a not-stored depth 4 would have to keep). BENCHMARKS.md, "the depth-4 lever, weighed".
Usage: scripts/trie-stored-mc.py [trials]
"""
import math
import random
import sys


def poisson(lam):
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= random.random()
        if p < limit:
            return k
        k += 1


def node(keys, depth):
    """(kind, marked, tree mask not empty) of the node over `keys`, which share `depth` nibbles."""
    if len(keys) == 1:
        return "leaf", False, False
    shared = depth
    while all(k[shared] == keys[0][shared] for k in keys):
        shared += 1
    children = {}
    for k in keys:
        children.setdefault(k[shared], []).append(k)
    hash_mask = tree_mask = False
    for child in children.values():
        kind, marked, _ = node(child, shared + 1)
        hash_mask |= kind == "branch"
        tree_mask |= marked
    kind = "branch" if shared == depth else "extension"
    return kind, hash_mask or tree_mask, tree_mask


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    random.seed(1)
    for accounts in (1e6, 1e7, 1e8):
        kept = 0
        for _ in range(trials):
            n = poisson(accounts / 16**5)
            if n < 2:
                continue
            keys = [[random.randrange(16) for _ in range(24)] for _ in range(n)]
            kind, _, tree_mask = node(keys, 0)
            kept += kind == "branch" and tree_mask
        p = kept / trials
        print(f"{accounts:.0e} accounts: depth-5 branches kept {p:.3f}, "
              f"depth-4 branches with a kept child {1 - (1 - p) ** 16:.2f}")


main()
