"""The job hash the ingress writes is the one RQ itself would write."""

from __future__ import annotations

import json
import zlib

from rq.serializers import DefaultSerializer

from shared.enqueue import JobSpec, build_job, job_fields
from shared.envelope import Envelope

SPEC = JobSpec(
    queue="hookline",
    timeout_seconds=60,
    claim_ttl_seconds=100,
    max_attempts=8,
    backoff_seconds=(5, 30, 120),
)
ENVELOPE = Envelope(
    source="moncash", event_id="evt_1", received_at=1.5, headers=(("A", "b"),), body=b"{}"
)


def _as_dict(flat: list[object]) -> dict[str, object]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))  # type: ignore[arg-type]


def test_template_fields_match_rqs_own_job_hash() -> None:
    ours = _as_dict(job_fields(ENVELOPE, SPEC))
    rq_own = {
        k: (v.value if hasattr(v, "value") else v)
        for k, v in build_job(ENVELOPE, SPEC, "x").to_dict().items()
        if v is not None
    }
    assert set(ours) == set(rq_own)
    for field in set(ours) - {"created_at", "enqueued_at", "data", "retry_intervals"}:
        assert str(ours[field]) == str(rq_own[field]), field
    # the same call, serialised the same way
    assert DefaultSerializer.loads(zlib.decompress(ours["data"])) == DefaultSerializer.loads(  # type: ignore[arg-type]
        zlib.decompress(rq_own["data"])  # type: ignore[arg-type]
    )


def test_retry_intervals_follow_the_backoff_with_jitter() -> None:
    intervals = json.loads(str(_as_dict(job_fields(ENVELOPE, SPEC))["retry_intervals"]))
    assert len(intervals) == SPEC.max_attempts - 1
    for got, base in zip(intervals, [5, 30, 120, 120, 120, 120, 120], strict=True):
        assert round(base * 0.8) <= got <= round(base * 1.2)
