"""`/openapi.json` describes what the server does: Schemathesis generates requests from it (valid and
invalid) against a real `vvtrt serve` (tiny model, CPU, `--max-frames 2` so every synthesis is short) and
checks every answer against the schema: no 5xx, only documented status codes, media types, headers and
bodies, invalid data refused, `Allow` on 405. Bounded: a few examples per operation, no shrinking."""
from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import checks  # noqa: E402

from server_fixtures import start_server  # noqa: E402

MAX_INPUT = 200
EXAMPLES = 15  # per operation and mode
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance,
          checks.negative_data_rejection, checks.unsupported_method]


@pytest.fixture(scope="module")
def schema_server(tiny_workdir, tmp_path_factory):
    srv = start_server(tiny_workdir.root, tmp_path_factory.mktemp("serve_schema"), "--max-streams", 4,
                       "--no-allow-frames", "--max-frames", 2, "--max-input-chars", MAX_INPUT)
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def api_schema(schema_server):
    return schemathesis.openapi.from_url(schema_server.url + "/openapi.json")


def test_the_schema_states_this_servers_limits(schema_server):
    spec = httpx.get(schema_server.url + "/openapi.json").json()
    op = spec["paths"]["/v1/audio/speech"]["post"]
    assert "422" not in op["responses"] and op["responses"]["400"]["content"]["application/json"]
    audio = op["responses"]["200"]["content"]
    assert "audio/wav" in audio and "application/json" not in audio
    assert op["responses"]["429"]["headers"]["Retry-After"]
    body = spec["components"]["schemas"]["SpeechBody"]["properties"]
    assert body["input"]["maxLength"] == MAX_INPUT and body["max_frames"]["maximum"] == 2
    assert body["frames"]["type"] == "null"  # --no-allow-frames
    assert body["seed"]["maximum"] == 2**63 - 1 and body["speed"]["minimum"] == body["speed"]["maximum"] == 1
    assert spec["components"]["schemas"]["ErrorBody"]["properties"]["error"]


def test_frames_refused_and_the_frame_cap_enforced(schema_server):
    r = httpx.post(schema_server.url + "/v1/audio/speech", json={"input": "Hello.", "frames": 2})
    assert r.status_code == 400 and "--allow-frames" in r.json()["error"]["message"]
    r = httpx.post(schema_server.url + "/v1/audio/speech", json={"input": "Hello.", "max_frames": 3})
    assert r.status_code == 400 and "max_frames" in r.json()["error"]["message"]


def _operations(schema):
    for result in schema.get_all_operations():
        yield result.ok()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_matches_the_server(api_schema, mode):
    """Generated requests for every operation; each answer checked against the schema."""
    tried = 0
    for op in _operations(api_schema):
        @given(case=op.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(checks=CHECKS, timeout=60)

        try:
            run()
        except Unsatisfiable:  # negative mode: an operation without parameters has no invalid request
            assert mode == "negative" and not op.body and not op.query, op.label
            continue
        tried += 1
    # speech, voices, models, health, ready, metrics, dashboard data, config; negative: speech, dashboard data
    assert tried >= (7 if mode == "positive" else 2)
