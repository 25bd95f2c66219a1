"""gRPC adapters: convert the request, delegate to the core, convert the answer back. Nothing else.

Errors propagate as domain exceptions; ``server.grpc_errors`` turns them into statuses.
"""

import time
from collections.abc import Iterator

import grpc

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server import converters
from server.core import HousingEndpoint, IrisEndpoint, ModelEndpoint
from server.domain import HousingPredictions, IrisClassifications, RequestContext
from server.interceptors import REQUEST_ID_KEY
from server.lifecycle import ModelWatcher
from server.streams import StreamAnswerer

ROUTING_KEY = "x-routing-key"


def request_context(context: grpc.ServicerContext) -> RequestContext:
    """The protocol-free view of a call: its request id, deadline and routing key."""
    request_id = "-"
    routing_key = None
    for key, value in context.invocation_metadata():
        if key == REQUEST_ID_KEY:
            request_id = str(value)
        elif key == ROUTING_KEY:
            routing_key = str(value)
    remaining = context.time_remaining()
    return RequestContext(
        request_id=request_id,
        deadline=None if remaining is None else time.monotonic() + remaining,
        routing_key=routing_key,
    )


def _model_info(endpoint: ModelEndpoint, watcher: ModelWatcher) -> model_pb2.ModelInfo:
    return converters.model_info_to_proto(
        endpoint.deployment(),
        endpoint.features,
        endpoint.max_batch_size,
        last_load_failure=watcher.last_failure(endpoint.slot),
        challenger_load_failure=watcher.last_failure(endpoint.slot, challenger=True),
        registry_reachable=watcher.registry_reachable,
    )


class HousingPredictorServicer(housing_pb2_grpc.HousingPredictorServicer):
    def __init__(
        self, endpoint: HousingEndpoint, watcher: ModelWatcher, *, stream_group: int = 64, read_ahead: int = 128
    ) -> None:
        self._endpoint = endpoint
        self._watcher = watcher
        features = endpoint.features
        self._streams: StreamAnswerer[housing_pb2.HousingFeatures, HousingPredictions] = StreamAnswerer(
            to_batch=lambda message: converters.features_to_batch((message,), features, is_batch=False),
            answer_each=endpoint.predict_each,
            reply=lambda sequence, result: housing_pb2.HousingStreamReply(
                sequence=sequence, prediction=converters.housing_prediction_to_proto(result)
            ),
            error_reply=lambda sequence, error: housing_pb2.HousingStreamReply(sequence=sequence, error=error),
            method="/prediction.v1.HousingPredictor/PredictStream",
            max_group=stream_group,
            read_ahead=read_ahead,
        )

    def Predict(  # noqa: N802 - names come from the proto
        self, request: housing_pb2.HousingFeatures, context: grpc.ServicerContext
    ) -> housing_pb2.HousingPrediction:
        batch = converters.features_to_batch((request,), self._endpoint.features, is_batch=False)
        return converters.housing_prediction_to_proto(self._endpoint.predict(batch, request_context(context)))

    def PredictBatch(  # noqa: N802
        self, request: housing_pb2.HousingBatchRequest, context: grpc.ServicerContext
    ) -> housing_pb2.HousingBatchPrediction:
        batch = converters.features_to_batch(request.instances, self._endpoint.features, is_batch=True)
        return converters.housing_batch_to_proto(self._endpoint.predict(batch, request_context(context)))

    def PredictColumns(  # noqa: N802
        self, request: housing_pb2.HousingColumns, context: grpc.ServicerContext
    ) -> housing_pb2.HousingColumnsPrediction:
        batch = converters.columns_to_batch(request, self._endpoint.features)
        return converters.housing_columns_to_proto(self._endpoint.predict(batch, request_context(context)))

    def PredictStream(  # noqa: N802
        self, request_iterator: Iterator[housing_pb2.HousingFeatures], context: grpc.ServicerContext
    ) -> Iterator[housing_pb2.HousingStreamReply]:
        return self._streams.serve(request_iterator, request_context(context))

    def GetModelInfo(  # noqa: N802
        self, request: model_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelInfo:
        return _model_info(self._endpoint, self._watcher)


class IrisClassifierServicer(iris_pb2_grpc.IrisClassifierServicer):
    def __init__(
        self, endpoint: IrisEndpoint, watcher: ModelWatcher, *, stream_group: int = 64, read_ahead: int = 128
    ) -> None:
        self._endpoint = endpoint
        self._watcher = watcher
        features = endpoint.features
        self._streams: StreamAnswerer[iris_pb2.IrisFeatures, IrisClassifications] = StreamAnswerer(
            to_batch=lambda message: converters.features_to_batch((message,), features, is_batch=False),
            answer_each=endpoint.classify_each,
            reply=lambda sequence, result: iris_pb2.IrisStreamReply(
                sequence=sequence, prediction=converters.iris_prediction_to_proto(result)
            ),
            error_reply=lambda sequence, error: iris_pb2.IrisStreamReply(sequence=sequence, error=error),
            method="/prediction.v1.IrisClassifier/ClassifyStream",
            max_group=stream_group,
            read_ahead=read_ahead,
        )

    def Classify(  # noqa: N802
        self, request: iris_pb2.IrisFeatures, context: grpc.ServicerContext
    ) -> iris_pb2.IrisPrediction:
        batch = converters.features_to_batch((request,), self._endpoint.features, is_batch=False)
        return converters.iris_prediction_to_proto(self._endpoint.classify(batch, request_context(context)))

    def ClassifyBatch(  # noqa: N802
        self, request: iris_pb2.IrisBatchRequest, context: grpc.ServicerContext
    ) -> iris_pb2.IrisBatchPrediction:
        batch = converters.features_to_batch(request.instances, self._endpoint.features, is_batch=True)
        return converters.iris_batch_to_proto(self._endpoint.classify(batch, request_context(context)))

    def ClassifyColumns(  # noqa: N802
        self, request: iris_pb2.IrisColumns, context: grpc.ServicerContext
    ) -> iris_pb2.IrisColumnsPrediction:
        batch = converters.columns_to_batch(request, self._endpoint.features)
        return converters.iris_columns_to_proto(self._endpoint.classify(batch, request_context(context)))

    def ClassifyStream(  # noqa: N802
        self, request_iterator: Iterator[iris_pb2.IrisFeatures], context: grpc.ServicerContext
    ) -> Iterator[iris_pb2.IrisStreamReply]:
        return self._streams.serve(request_iterator, request_context(context))

    def GetModelInfo(  # noqa: N802
        self, request: model_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelInfo:
        return _model_info(self._endpoint, self._watcher)
