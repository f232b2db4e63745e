"""`/readyz`'s rule per deployment: autoscaling and updates keep a deployment ready while a replica runs.

Under load the CPU profile asks for more MediaDecoder replicas than a 2-core machine can place;
the deployment then reports UPSCALING for as long as the load lasts, and a readiness probe that
wanted HEALTHY took the service out of rotation exactly when it was busiest. Likewise a rollout
(UPDATING) under load answered 503 while the old replicas still served every request.
"""

import pytest

from deployments.ingress import deployment_ready
from pipeline.schemas import DeploymentState, ModelVersion

WEIGHTS = ModelVersion(version="fast_triage/v1", trained=True)


@pytest.mark.parametrize(
    ("status", "replicas", "model", "needs_model", "ready"),
    [
        ("HEALTHY", {"RUNNING": 1}, WEIGHTS, True, True),
        ("UPSCALING", {"RUNNING": 2, "STARTING": 2}, WEIGHTS, True, True),
        ("DOWNSCALING", {"RUNNING": 3, "STOPPING": 1}, WEIGHTS, True, True),
        ("HEALTHY", {"RUNNING": 1}, None, False, True),  # Ingress, JobQueue: no weights
        ("HEALTHY", {"RUNNING": 1}, None, True, False),  # weights not loaded (yet)
        ("UPSCALING", {"STARTING": 1}, WEIGHTS, True, False),  # nothing running yet
        ("UPDATING", {"RUNNING": 1, "STARTING": 1}, WEIGHTS, True, True),  # a rollout: the old replica answers
        ("UPDATING", {"UPDATING": 1}, WEIGHTS, True, True),  # a new user_config applied in place, as Serve reports it
        ("UPDATING", {"STARTING": 1}, WEIGHTS, True, False),  # the first deploy: nothing running yet
        ("UNHEALTHY", {"RUNNING": 1}, WEIGHTS, True, False),
        ("DEPLOY_FAILED", {}, None, True, False),
    ],
)
def test_deployment_ready(status: str, replicas: dict, model: ModelVersion | None, needs_model: bool, ready: bool) -> None:
    state = DeploymentState(status=status, replicas=replicas, model=model)
    assert deployment_ready(state, needs_model) is ready
