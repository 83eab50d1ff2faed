"""The converter as a job stage: `dbrx serve converter` (ConverterService and
JobService over one job store) and `dbrx worker converter` (runs CONVERT jobs,
with progress and cancellation between tensor groups and calibration samples)."""

from dbrx_serve.shared.job_stage import JobStage
from dbrx_serve.shared.jobstore import CONVERT

from .convert import convert
from .convert_pb import PATHS
from .options import ConvertOptions
from .servicer import converter_servicer

CONVERTER = JobStage("converter", CONVERT, 50052, ConvertOptions.from_dict, convert, converter_servicer,
                     path_fields=PATHS)
