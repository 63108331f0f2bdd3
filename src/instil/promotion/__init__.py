"""One gated instance-incremental phase on a deployed model, split along the way data flows:

- `labelled`, `folders`, `sources`: the new data and the holdout, read from class folders, a
  Dataset, a DataLoader or tensors, into one tensor each, checked against the model;
- `phase`: the promotion's config and method, and the phase itself, through the protocol's
  `train_phase`;
- `report`: holdout scores before and after, the gate, the report (JSON and Markdown);
- `files`: what `instil promote` does around it: checkpoints and report files, the lock.

`instil.promote` (instil.api) strings the first three together; `instil.Learner`
(instil.learner) runs their phase on a stream of parts.
"""
