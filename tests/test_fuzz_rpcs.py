"""Every RPC of ModelRouterService and AdminService, fed random field values.

A live server (a real process on the shared etcd and a SQLite file) gets requests whose
every field may be empty, huge, full of control characters, a long or nested list, an
extreme or non-finite number or an enum number the schema does not name. Every answer
must be OK or a documented status with a message (never INTERNAL or UNKNOWN), and the
server must stay healthy and keep answering correctly afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from modelroute.admin.v1 import admin_pb2
from modelroute.server.api.errors import decode_details
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import ServerProcess
from tests.proto_strategies import messages

# The statuses the API documents (DESIGN.md "Errors", docs and the error table).
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
}
METHODS: list[MethodDescriptor] = [
    *router_pb2.DESCRIPTOR.services_by_name["ModelRouterService"].methods,
    *admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods,
]
RAG = router_pb2.ResolveModelRequest(context="rag.answer")


class Client:
    """Calls any method by descriptor, on one channel."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
        )

    def call(self, method: MethodDescriptor, request: Message) -> None:
        path = f"/{method.containing_service.full_name}/{method.name}"
        response_class = message_factory.GetMessageClass(method.output_type)
        if method.server_streaming:
            stream = self.channel.unary_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_class.FromString,
            )(request, timeout=10)
            try:
                next(iter(stream))  # the current revision arrives at once
            finally:
                stream.cancel()
            return
        self.channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )(request, timeout=10)

    def resolve(self) -> router_pb2.ResolveModelResponse:
        return router_pb2_grpc.ModelRouterServiceStub(self.channel).ResolveModel(RAG, timeout=10)

    def report(self, request: router_pb2.ReportUsageRequest) -> router_pb2.ReportUsageResponse:
        return router_pb2_grpc.ModelRouterServiceStub(self.channel).ReportUsage(request, timeout=10)


@pytest.fixture(scope="module")
def live(etcd_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("fuzz")
    server = ServerProcess(
        [
            "--etcd-endpoints",
            etcd_endpoint,
            "--etcd-prefix",
            f"/mrfuzz/{uuid.uuid4().hex[:12]}/",
            "--seed",
            "--database-url",
            f"sqlite:///{root / 'usage.db'}",
            "--data-dir",
            str(root / "data"),
        ]
    )
    client = Client(server.port)
    yield client
    client.channel.close()
    assert server.stop() == 0


def answers_as_documented(client: Client, method: MethodDescriptor, request: Message) -> None:
    try:
        client.call(method, request)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        code = error.code()
        assert code in DOCUMENTED, f"{method.name} answered {code.name}: {error.details()}"
        assert error.details(), f"{method.name}: {code.name} without a message"
        # gRPC itself refuses messages over the server's size limit (no details then).
        if "larger than max" not in (error.details() or ""):
            assert "ErrorInfo" in decode_details(error), f"{method.name}: no ErrorInfo"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_rpc_answers_random_input_with_a_documented_status(
    live: Client, method: MethodDescriptor
) -> None:
    baseline = live.resolve()

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=messages(method.input_type))
    def fuzz(request: Message) -> None:
        answers_as_documented(live, method, request)

    fuzz()

    # Still healthy, and still deciding the way it did before.
    health = health_pb2_grpc.HealthStub(live.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    after = live.resolve()
    assert (after.model_id, after.reason) == (baseline.model_id, baseline.reason)
    report = router_pb2.UsageReport(
        report_id=uuid.uuid4().hex,
        context="rag.answer",
        model_id=after.model_id,
        outcome=types_pb2.OUTCOME_OK,
        input_tokens=10,
    )
    stored = live.report(router_pb2.ReportUsageRequest(reports=[report]))
    assert [r.status for r in stored.results] == [router_pb2.REPORT_STATUS_ACCEPTED]


def huge(size: int = 70_000) -> str:
    return "é" * size


EDGE_CASES: list[tuple[str, str, Message, grpc.StatusCode]] = [
    # Client input echoed in an error must not push the status past gRPC's trailer limit.
    (
        "AdminService",
        "GetExperimentResults",
        admin_pb2.GetExperimentResultsRequest(experiment_id=huge()),
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "AdminService",
        "ApplyConfig",
        admin_pb2.ApplyConfigRequest(
            changes=[
                admin_pb2.KeyChange(key=f"models/{huge(300)}{i}", value_json="{")
                for i in range(500)
            ]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ModelRouterService",
        "ResolveModel",
        router_pb2.ResolveModelRequest(context=huge(), exclude_models=[huge(500)] * 32),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    # Timestamps outside years 1-9999 are bad input, not a server fault.
    (
        "AdminService",
        "GetUsageSummary",
        admin_pb2.GetUsageSummaryRequest(from_time=timestamp_pb2.Timestamp(seconds=-(2**63))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "AdminService",
        "ListAlerts",
        admin_pb2.ListAlertsRequest(since=timestamp_pb2.Timestamp(seconds=2**62)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
]


@pytest.mark.parametrize(
    ("service", "name", "request_message", "expected"),
    EDGE_CASES,
    ids=[f"{name}-{i}" for i, (_, name, _, _) in enumerate(EDGE_CASES)],
)
def test_edge_inputs_get_their_documented_status(
    live: Client, service: str, name: str, request_message: Message, expected: grpc.StatusCode
) -> None:
    method = next(m for m in METHODS if m.containing_service.name == service and m.name == name)
    with pytest.raises(grpc.RpcError) as caught:
        live.call(method, request_message)
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == expected, error.details()
    assert "ErrorInfo" in decode_details(error)


def test_an_out_of_range_report_is_rejected_alone(live: Client) -> None:
    """A report whose values the database cannot hold must not fail the others' commit."""
    bad_retry = router_pb2.UsageReport(
        report_id=uuid.uuid4().hex,
        context="rag.answer",
        model_id="gpt-4o-mini",
        outcome=types_pb2.OUTCOME_RATE_LIMITED,
        retry_after=duration_pb2.Duration(seconds=10**12),
    )
    bad_time = router_pb2.UsageReport(
        report_id=uuid.uuid4().hex,
        context="rag.answer",
        model_id="gpt-4o-mini",
        outcome=types_pb2.OUTCOME_OK,
        occurred_at=timestamp_pb2.Timestamp(seconds=-(2**62)),
    )
    good = router_pb2.UsageReport(
        report_id=uuid.uuid4().hex,
        context="rag.answer",
        model_id="gpt-4o-mini",
        outcome=types_pb2.OUTCOME_OK,
    )
    reply = live.report(router_pb2.ReportUsageRequest(reports=[bad_retry, bad_time, good]))
    assert [r.status for r in reply.results] == [
        router_pb2.REPORT_STATUS_REJECTED,
        router_pb2.REPORT_STATUS_REJECTED,
        router_pb2.REPORT_STATUS_ACCEPTED,
    ]
    assert reply.results[0].error.startswith("retry_after:")
    assert reply.results[1].error.startswith("occurred_at:")


@pytest.mark.parametrize(
    ("name", "request_message"),
    [
        (
            "ListConfigChanges",
            admin_pb2.ListConfigChangesRequest(since=timestamp_pb2.Timestamp(seconds=-(2**63))),
        ),
        ("PreviewConfigChange", admin_pb2.PreviewConfigChangeRequest(window_seconds=2**62)),
    ],
)
def test_out_of_range_history_inputs_are_invalid_arguments(
    live: Client, name: str, request_message: Message
) -> None:
    method = next(m for m in METHODS if m.name == name)
    with pytest.raises(grpc.RpcError) as caught:
        live.call(method, request_message)
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
