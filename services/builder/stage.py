"""The builder as a job stage: `dbrx serve builder` (BuilderService and JobService
over one job store) and `dbrx worker builder` (runs BUILD jobs, with progress
and cancellation between tensor groups)."""

from dbrx_serve.shared.job_stage import JobStage
from dbrx_serve.shared.jobstore import BUILD

from .build import build
from .convert_pb import PATHS
from .options import BuildOptions
from .servicer import builder_servicer

BUILDER = JobStage("builder", BUILD, 50053, BuildOptions.from_dict, build, builder_servicer,
                   path_fields=PATHS)
