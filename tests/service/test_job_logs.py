"""Log lines are JSON and carry the job id of the work they belong to."""

from __future__ import annotations

import json
import logging

from service.jobs import JobIdFilter, JsonFormatter, job_context


def _line(logger: logging.Logger, message: str, **extra: object) -> dict:
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, message, (), None, extra=extra
    )
    JobIdFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def test_log_lines_carry_the_job_id_inside_a_job_only() -> None:
    logger = logging.getLogger("metahmr.test")
    with job_context("1234"):
        inside = _line(logger, "job queued", width=640)
    outside = _line(logger, "idle")
    assert inside["job_id"] == "1234" and inside["msg"] == "job queued" and inside["width"] == 640
    assert inside["level"] == "INFO" and inside["logger"] == "metahmr.test" and "ts" in inside
    assert "job_id" not in outside
