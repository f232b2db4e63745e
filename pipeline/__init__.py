"""The analysis pipeline, written once and free of Ray: decode -> triage -> keyframes -> visual / av -> fuse -> verdict.

- `pipeline.config`: one pydantic config per stage (and per deployment's `user_config`), `PipelineConfig`.
- `pipeline.table`: the stage table (deployment name, weight bundle, config model, pinnable).
- `pipeline.results`: what each stage returns (no torch: the ingress reads these).
- `pipeline.stages`: the stages themselves, plain functions over loaded models (torch).
- `pipeline.analyze`: `analyze()`, the graph's order over injectable stage callables, and the verdict.
- `pipeline.local`: the stages bound to loaded bundles in this process (training, benchmark, tests).

Serve deployments wrap these functions (weights, batching, handles); training and the benchmark
call them directly, so what a replica computes and what a model is trained and measured on
cannot drift apart.
"""
