"""Not provided: the original's ``KFPWorkflow`` on Kubeflow Pipelines v1 (see :mod:`functionfuse.backends.addons`)."""

from . import not_provided

raise not_provided(
    __name__,
    "KFPWorkflow",
    "it was written against the Kubeflow Pipelines v1 SDK (kfp.components.create_component_from_func, "
    "InputBinaryFile, OutputBinaryFile), which the KFP v2 SDK removed, so it does not run on a current kfp.",
    "To run on Kubernetes, use RayWorkflow on a KubeRay cluster or DaskWorkflow on a dask-kubernetes "
    "cluster, with an S3 storage that every pod can reach.",
)
