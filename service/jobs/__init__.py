"""The Redis job store (`store`) and job-scoped logging (`logs`): what the API and the
workers share, and the only part of the service a worker imports besides the contract.

Everything is re-exported here, so ``from service.jobs import JobStore, job_context`` works.
"""

from service.jobs.logs import (
    JobIdFilter,
    JsonFormatter,
    configure_logging,
    current_job_id,
    job_context,
)
from service.jobs.store import (
    DURATION_BUCKETS_S,
    FILE_MEDIA_TYPES,
    FILE_NAMES,
    RECOVER_TASK,
    TTO_STEP_BUCKETS,
    HistogramData,
    JobCanceled,
    JobError,
    JobRecord,
    JobStats,
    JobStatus,
    JobStore,
    LeaseLost,
    Progress,
    celery_broker_url,
    check_redis_url,
    is_job_id,
    now_iso,
    require_redis_url,
)

__all__ = [
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
    "Progress",
    "RECOVER_TASK",
    "TTO_STEP_BUCKETS",
    "celery_broker_url",
    "check_redis_url",
    "configure_logging",
    "current_job_id",
    "is_job_id",
    "job_context",
    "now_iso",
    "require_redis_url",
]
