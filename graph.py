"""Builds the SpectraShield Serve application; the only place deployments are bound together.

`serve run cluster/serve.cpu.yaml` imports `graph:build_app` and passes the config's `args`,
validated as `GraphArgs`; `serve run graph:app` runs the defaults.
"""

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.av_alignment import AVAlignmentDeployment
from deployments.compression import CompressionResilientDeployment
from deployments.decoder import MediaDecoderDeployment
from deployments.fusion import FusionDeployment
from deployments.ingress import SpectraShieldIngress
from deployments.jobs import JobQueueDeployment
from deployments.keyframes import KeyframeSelectorDeployment
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
    decoder = MediaDecoderDeployment.bind()
    triage = FastTriageDeployment.bind(weights_dir)
    keyframes = KeyframeSelectorDeployment.bind()
    compression = CompressionResilientDeployment.bind(weights_dir)
    av = AVAlignmentDeployment.bind(weights_dir)
    fusion = FusionDeployment.bind(weights_dir)
    jobs = JobQueueDeployment.bind()
    return SpectraShieldIngress.bind(decoder, triage, keyframes, compression, av, fusion, jobs)


app = build_app(GraphArgs())
