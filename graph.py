"""Builds the SpectraShield Serve application; the only place deployments are bound together.

`serve run cluster/serve.cpu.yaml` imports `graph:build_app` and passes the config's `args`,
validated as `GraphArgs`; `serve run graph:app` runs the defaults (every deployment starts with
its config model's defaults and the shipped weights, no YAML needed).
"""

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.av_alignment import AVAlignmentDeployment
from deployments.compression import CompressionResilientDeployment
from deployments.decoder import MediaDecoderDeployment
from deployments.fusion import FusionDeployment
from deployments.ingress import SpectraShieldIngress
from deployments.job_worker import JobWorkerDeployment
from deployments.jobs import JobQueueDeployment
from deployments.keyframes import KeyframeSelectorDeployment
from deployments.keys import GatekeeperDeployment
from deployments.triage import FastTriageDeployment


class GraphArgs(BaseModel):
    """Arguments of the application builder (the `args:` block of a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    weights_dir: str | None = Field(
        None, description="root holding <model>/<version>/ bundles; default: the repo's weights/ directory"
    )


def build_app(args: GraphArgs) -> Application:
    """Bind every deployment into the DAG of DESIGN.md and return the ingress application."""
    weights_dir = args.weights_dir
    stages = (
        MediaDecoderDeployment.bind(),
        FastTriageDeployment.bind(weights_dir),
        KeyframeSelectorDeployment.bind(),
        CompressionResilientDeployment.bind(weights_dir),
        AVAlignmentDeployment.bind(weights_dir),
        FusionDeployment.bind(weights_dir),
    )  # in `deployments.orchestration.STAGE_DEPLOYMENTS` order
    jobs = JobQueueDeployment.bind()
    worker = JobWorkerDeployment.bind(*stages, jobs)
    return SpectraShieldIngress.bind(*stages, jobs, GatekeeperDeployment.bind(), worker)


app = build_app(GraphArgs())
