"""The Redis job store (`store`, its Lua `scripts`, the `records` it holds), job-scoped logging (`logs`) and the
settings they need (`settings`): what the API and the workers share, and the only part of the
service a worker imports besides the contract.

Everything is re-exported here, so ``from service.jobs import JobStore, job_context`` works.
"""

from service.jobs.logs import (
    JobIdFilter,
    JsonFormatter,
    configure_logging,
    current_job_id,
    job_context,
)
from service.jobs.records import (
    DURATION_BUCKETS_S,
    FILE_MEDIA_TYPES,
    FILE_NAMES,
    NEW_JOB_PRIORITY,
    PRIORITY_STEPS,
    RECOVER_TASK,
    RERUN_PRIORITY,
    TTO_STEP_BUCKETS,
    HistogramData,
    JobCanceled,
    JobError,
    JobRecord,
    JobStats,
    JobStatus,
    LeaseLost,
    Progress,
    is_job_id,
    now_iso,
)
from service.jobs.settings import LOG_LEVELS, JobStoreSettings
from service.jobs.store import JobStore

__all__ = [
    "LOG_LEVELS",
    "JobStoreSettings",
    "DURATION_BUCKETS_S",
    "FILE_MEDIA_TYPES",
    "FILE_NAMES",
    "HistogramData",
    "JobCanceled",
    "JobError",
    "JobIdFilter",
    "JobRecord",
    "JobStats",
    "JobStatus",
    "JobStore",
    "JsonFormatter",
    "LeaseLost",
    "NEW_JOB_PRIORITY",
    "PRIORITY_STEPS",
    "Progress",
    "RECOVER_TASK",
    "RERUN_PRIORITY",
    "TTO_STEP_BUCKETS",
    "configure_logging",
    "current_job_id",
    "is_job_id",
    "job_context",
    "now_iso",
]
