"""Not provided: the original's ``RayWorkflow`` on Ray Workflows (see :mod:`functionfuse.backends.addons`)."""

from . import not_provided

raise not_provided(
    __name__,
    "RayWorkflow on Ray Workflows",
    "Ray Workflows (ray.workflow) was deprecated in Ray 2.44 and removed from Ray (the last release "
    "with it is ray 2.47), so a backend built on it cannot run on a current Ray.",
    "Replace\n"
    "    from functionfuse.backends.addons.rayworkflowback import RayWorkflow\n"
    "with\n"
    "    from functionfuse.backends.builtin.rayback import RayWorkflow\n"
    "which runs the same nodes as Ray tasks and actors; resuming after a crash comes from the "
    "storage (set_storage): a rerun reads every stored result and computes only what is missing.",
)
