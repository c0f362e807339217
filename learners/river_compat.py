"""Pickling fixes for River structures too deep for the default recursive pickler.

River's E-BST splitter (used by `tree.HoeffdingTreeRegressor` for numeric features) keeps a
binary search tree of the values seen in a leaf. On a monotonic feature (a timestamp, an
ordinal date) that tree is a linked list as long as the leaf has seen samples, and pickling
it recurses once per node: a fresh ``hoeffding-reg`` model on ``TrumpApproval`` cannot be
pickled after ≈ 400 samples (``RecursionError``), which would make its snapshot impossible.
River already copies these nodes iteratively (``EBSTNode.__deepcopy__``); importing this
module registers (with `copyreg`) an iterative pickle reduction for them too. Pickles made
this way need `learners` to be importable where they are loaded.

Examples
--------
>>> import pickle
>>> from river import tree
>>> model = tree.HoeffdingTreeRegressor()
>>> for i in range(2_000):
...     model.learn_one({"t": float(i)}, float(i % 7))
>>> restored = pickle.loads(pickle.dumps(model))
>>> restored.predict_one({"t": 10.0}) == model.predict_one({"t": 10.0})
True
"""

from __future__ import annotations

import copyreg
from typing import Any

from river.tree.splitter.ebst_splitter import EBSTNode

_Flat = list[tuple[Any, Any, Any, int, int]]


def _reduce_ebst(root: EBSTNode) -> tuple[Any, tuple[_Flat]]:
    """Flatten the subtree under ``root`` breadth first: (value, estimator, updater, l, r)."""
    order = [root]
    position = {id(root): 0}
    for node in order:  # grows while iterating
        for child in (node._left, node._right):
            if child is not None:
                position[id(child)] = len(order)
                order.append(child)
    flat = [
        (
            node.att_val,
            node.estimator,
            node._update_estimator,
            -1 if node._left is None else position[id(node._left)],
            -1 if node._right is None else position[id(node._right)],
        )
        for node in order
    ]
    return _rebuild_ebst, (flat,)


def _rebuild_ebst(flat: _Flat) -> EBSTNode:
    """Inverse of `_reduce_ebst`."""
    nodes = [EBSTNode.__new__(EBSTNode) for _ in flat]
    for node, (att_val, estimator, update, left, right) in zip(nodes, flat, strict=True):
        node.att_val = att_val
        node.estimator = estimator
        node._update_estimator = update
        node._left = None if left < 0 else nodes[left]
        node._right = None if right < 0 else nodes[right]
    return nodes[0]


copyreg.pickle(EBSTNode, _reduce_ebst)
