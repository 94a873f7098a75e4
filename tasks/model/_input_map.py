"""Starting a table model from one trained on other columns or categories: input weights mapped by feature name.

    tensors, mapping = map_inputs(source.tensors, source.spec, spec, network, "runs/old/model")
    mapping.line()   # "inputs mapped by name: 11 kept, 2 added (cut=Astor, depth), 1 dropped (table)"

Next month's table gains a category, a column, or loses one: the first layer
then has another number of input columns, and the bundle's tensors do not
fit by shape. Its data spec names every input column, so the first layer's
weight columns are carried over by name; an embedding's rows by category
value. What has no counterpart starts so that the model at first predicts
as the old one did:

- a new one-hot category column takes the old `column=__other__` weights
  when the old model had that bucket (the old model put an unseen value
  there), else zeros (the old model saw all zeros for it);
- a new category in an embedding takes the old "other" row, for the same
  reason; a new numeric column starts at zero weight;
- the weights of a removed column are dropped.

Every other tensor (hidden layers, head, biases) loads by name.
This works for the built-in table networks (mlp, linear, with or without
category embeddings); for any other network, or a source that does not
record its columns (a checkpoint or a state dict), a first layer of another
width is a ConfigError that names the columns.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from schemas.data import DataSpec
from schemas.errors import ConfigError
from schemas.limits import clip_text
from schemas.model import InputMapping
from schemas.table import FIRST_CODE, OTHER, OTHER_CODE, ColumnSpec
from tasks.nets.networks import MLP, CategoryEmbeddings

BODY = "body."
EMBEDDED = "\x1f"  # joins an embedded column's name and a position in its vector (no column name holds it)


def _first_layer(network: nn.Module) -> str | None:
    """The state-dict prefix of the layer that takes the input columns ('' for a bare Linear); None if unknown."""
    body = network.body if isinstance(network, CategoryEmbeddings) else network
    outer = BODY if isinstance(network, CategoryEmbeddings) else ""
    if isinstance(body, MLP):
        return f"{outer}net.0."
    if isinstance(body, nn.Linear):
        return outer
    return None


def _embedded(spec: DataSpec) -> list[ColumnSpec]:
    table = spec.preprocessing.table
    return [] if table is None else [c for c in table.ordered if c.encoding == "embedding"]


def _labels(spec: DataSpec) -> list[str]:
    """The first layer's input columns: dense feature names, then each embedding's width, as 'column<US>j'."""
    embedded = _embedded(spec)
    dense = list(spec.feature_names[: len(spec.feature_names) - len(embedded)])
    return dense + [f"{c.name}{EMBEDDED}{j}" for c, (_, width) in zip(embedded, spec.embeddings) for j in range(width)]


def _renamed(tensors: Mapping[str, torch.Tensor], theirs: DataSpec, spec: DataSpec) -> dict[str, torch.Tensor]:
    """The source's tensor names as this network names them, across a change between one-hot and embeddings."""
    had, has = bool(theirs.embeddings), bool(spec.embeddings)
    if had == has:
        return dict(tensors)
    if has:
        return {(k if k.startswith("embeddings.") else BODY + k): v for k, v in tensors.items()}
    return {k[len(BODY):]: v for k, v in tensors.items() if k.startswith(BODY)}


def _other_label(label: str, old: dict[str, int]) -> str | None:
    """For a one-hot column 'c=v' unseen before: the old model's 'c=__other__' column, if it had one."""
    column, sep, _ = label.partition("=")
    fallback = f"{column}={OTHER}"
    return fallback if sep and fallback in old else None


def _embedding_rows(old: ColumnSpec, new: ColumnSpec, weight: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The new column's embedding table from the old one's rows, by category value; (table, values added)."""
    index = {value: FIRST_CODE + i for i, value in enumerate(old.categories)}
    rows = [OTHER_CODE, 1] + [index.get(value, OTHER_CODE) for value in new.categories]
    added = [f"{new.name}={value}" for value in new.categories if value not in index]
    return weight[torch.tensor(rows)].clone(), added


def map_inputs(
    tensors: Mapping[str, torch.Tensor], theirs: DataSpec | None, spec: DataSpec, network: nn.Module, source: str
) -> tuple[dict[str, torch.Tensor], InputMapping | None]:
    """The source tensors with the first layer's columns and the embeddings re-laid for this data, by name.

    None for the mapping when the inputs are the same as the source's (nothing to map), or when the network
    has no known first layer and its inputs' shapes agree.
    """
    prefix = _first_layer(network)
    own = network.state_dict()
    if theirs is None or prefix is None or len(theirs.input_shape) != 1 or len(spec.input_shape) != 1:
        _check_first_layer_fits(tensors, own, prefix, theirs, spec, source)
        return dict(tensors), None
    tensors = _renamed(tensors, theirs, spec)
    old_labels, new_labels = _labels(theirs), _labels(spec)
    old_embedded = {c.name: (i, c) for i, c in enumerate(_embedded(theirs))}
    new_embedded = _embedded(spec)
    if old_labels == new_labels and all(old_embedded.get(c.name, (0, None))[1] == c for c in new_embedded):
        return tensors, None
    weight = tensors.get(prefix + "weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != len(old_labels):
        _check_first_layer_fits(tensors, own, prefix, None, spec, source)
        return tensors, None
    old = {label: i for i, label in enumerate(old_labels)}
    mapped = torch.zeros((weight.shape[0], len(new_labels)), dtype=weight.dtype)
    kept, added = 0, []
    usable = {c.name for c in new_embedded if c.name in old_embedded and spec.embeddings[new_embedded.index(c)][1]
              == theirs.embeddings[old_embedded[c.name][0]][1]}  # an embedding of the same width
    for i, label in enumerate(new_labels):
        column = label.rpartition(EMBEDDED)[0] if EMBEDDED in label else None
        taken = old.get(label) if column is None or column in usable else None
        other = _other_label(label, old) if taken is None and column is None else None
        if taken is not None:
            mapped[:, i] = weight[:, taken]
            kept += 1
        else:
            if other is not None:
                mapped[:, i] = weight[:, old[other]]
            added.append(column or label)
    out = dict(tensors)
    out[prefix + "weight"] = mapped
    for i, column in enumerate(new_embedded):
        old_key = f"embeddings.{old_embedded[column.name][0]}.weight" if column.name in old_embedded else None
        out.pop(f"embeddings.{i}.weight", None)
        if column.name in usable and old_key in tensors:
            out[f"embeddings.{i}.weight"], new_values = _embedding_rows(old_embedded[column.name][1], column,
                                                                        tensors[old_key])
            added += new_values
    for key in [k for k in out if k.startswith("embeddings.") and k not in own]:
        del out[key]
    new_set = set(new_labels)
    dropped = []
    for label in old_labels:
        name = label.rpartition(EMBEDDED)[0] if EMBEDDED in label else label
        if label not in new_set and name not in usable and name not in dropped:
            dropped.append(name)
    return out, InputMapping(kept=kept, added=tuple(dict.fromkeys(added)), dropped=tuple(dropped))


def _check_first_layer_fits(
    tensors: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], prefix: str | None,
    theirs: DataSpec | None, spec: DataSpec, source: str,
) -> None:
    """A ConfigError naming this data's columns when the first layer's width differs and cannot be mapped."""
    if prefix is None or len(spec.input_shape) != 1:
        return
    weight, mine = tensors.get(prefix + "weight"), own.get(prefix + "weight")
    if weight is None or mine is None or weight.ndim != 2 or weight.shape[1] == mine.shape[1]:
        return
    names = ", ".join(clip_text(n, 40) for n in spec.feature_names[:12]) + (" ..." if spec.n_features > 12 else "")
    why = ("it does not record its columns (only a bundle, a run's model/ folder, does)" if theirs is None
           else "its columns could not be matched by name")
    raise ConfigError(
        f"model.init_from = {source!r}: its first layer takes {weight.shape[1]} inputs, this table's columns make "
        f"{mine.shape[1]} ({names}); {why}. Start from the run's bundle, or train from scratch"
    )
